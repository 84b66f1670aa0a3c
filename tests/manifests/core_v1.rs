//! A hand-written subset of the core/v1 schema (field names and types as in `k8s.io/api/core/v1`), for what the
//! Kruise CRDs leave schemaless: the sidecar container (beyond Kruise's own fields), the SidecarSet volumes and
//! the CloneSet pod template. Kruise decodes these into the Go types, which drop unknown fields without a word,
//! so a typo such as `livenesProbe` would vanish unnoticed. Every object lists all of its type's fields; the ones
//! this example does not use are left open (any value but null). Not a substitute for the server's validation of
//! values (names, quantities, paths, ranges).

use serde_json::{json, Map, Value};

fn obj(props: Value, required: &[&str]) -> Value {
    let mut s = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    s
}

/// Fields of a known type this example does not use (whitespace-separated names): anything but null.
fn open_fields(s: &mut Value, names: &str) {
    let props: &mut Map<String, Value> = s["properties"].as_object_mut().expect("properties");
    for n in names.split_whitespace() {
        assert!(!props.contains_key(n), "{n} listed twice");
        props.insert(n.to_string(), open());
    }
}

fn open() -> Value {
    json!({"x-kubernetes-preserve-unknown-fields": true})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn int32() -> Value {
    json!({"type": "integer", "format": "int32"})
}

fn int64() -> Value {
    json!({"type": "integer", "format": "int64"})
}

fn int_or_string() -> Value {
    json!({"x-kubernetes-int-or-string": true})
}

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

fn enumeration(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

pub fn object_meta() -> Value {
    let mut s = obj(
        json!({
            "name": string(), "generateName": string(), "namespace": string(),
            "labels": string_map(), "annotations": string_map(),
        }),
        &[],
    );
    open_fields(
        &mut s,
        "uid resourceVersion generation creationTimestamp deletionTimestamp deletionGracePeriodSeconds \
        ownerReferences finalizers managedFields selfLink",
    );
    s
}

fn exec_action() -> Value {
    obj(json!({"command": strings()}), &[])
}

fn http_get_action() -> Value {
    obj(
        json!({
            "path": string(), "port": int_or_string(), "host": string(),
            "scheme": enumeration(&["HTTP", "HTTPS"]),
            "httpHeaders": array(obj(json!({"name": string(), "value": string()}), &["name", "value"])),
        }),
        &["port"],
    )
}

fn tcp_socket_action() -> Value {
    obj(json!({"port": int_or_string(), "host": string()}), &["port"])
}

fn probe() -> Value {
    obj(
        json!({
            "exec": exec_action(), "httpGet": http_get_action(), "tcpSocket": tcp_socket_action(),
            "grpc": obj(json!({"port": int32(), "service": string()}), &["port"]),
            "initialDelaySeconds": int32(), "timeoutSeconds": int32(), "periodSeconds": int32(),
            "successThreshold": int32(), "failureThreshold": int32(), "terminationGracePeriodSeconds": int64(),
        }),
        &[],
    )
}

fn lifecycle_handler() -> Value {
    obj(
        json!({
            "exec": exec_action(), "httpGet": http_get_action(), "tcpSocket": tcp_socket_action(),
            "sleep": obj(json!({"seconds": int64()}), &["seconds"]),
        }),
        &[],
    )
}

fn seccomp_profile() -> Value {
    obj(
        json!({"type": enumeration(&["RuntimeDefault", "Unconfined", "Localhost"]), "localhostProfile": string()}),
        &["type"],
    )
}

fn security_context() -> Value {
    let mut s = obj(
        json!({
            "runAsNonRoot": boolean(), "runAsUser": int64(), "runAsGroup": int64(),
            "readOnlyRootFilesystem": boolean(), "allowPrivilegeEscalation": boolean(), "privileged": boolean(),
            "capabilities": obj(json!({"add": strings(), "drop": strings()}), &[]),
            "seccompProfile": seccomp_profile(),
        }),
        &[],
    );
    open_fields(&mut s, "seLinuxOptions windowsOptions procMount appArmorProfile");
    s
}

fn pod_security_context() -> Value {
    let mut s = obj(
        json!({
            "runAsNonRoot": boolean(), "runAsUser": int64(), "runAsGroup": int64(), "fsGroup": int64(),
            "supplementalGroups": array(int64()), "seccompProfile": seccomp_profile(),
        }),
        &[],
    );
    open_fields(
        &mut s,
        "fsGroupChangePolicy seLinuxOptions seLinuxChangePolicy supplementalGroupsPolicy sysctls windowsOptions \
        appArmorProfile",
    );
    s
}

fn resources() -> Value {
    let quantities = json!({"type": "object", "additionalProperties": int_or_string()});
    let mut s = obj(json!({"limits": quantities.clone(), "requests": quantities}), &[]);
    open_fields(&mut s, "claims");
    s
}

fn volume_mount() -> Value {
    let mut s = obj(
        json!({"name": string(), "mountPath": string(), "readOnly": boolean(), "subPath": string()}),
        &["name", "mountPath"],
    );
    open_fields(&mut s, "recursiveReadOnly subPathExpr mountPropagation");
    s
}

fn env_var() -> Value {
    let mut s = obj(json!({"name": string(), "value": string()}), &["name"]);
    open_fields(&mut s, "valueFrom");
    s
}

fn container_port() -> Value {
    obj(
        json!({
            "containerPort": int32(), "hostPort": int32(), "hostIP": string(), "name": string(),
            "protocol": enumeration(&["TCP", "UDP", "SCTP"]),
        }),
        &["containerPort"],
    )
}

/// core/v1 Container.
pub fn container() -> Value {
    let mut s = obj(
        json!({
            "name": string(), "image": string(), "command": strings(), "args": strings(), "workingDir": string(),
            "ports": array(container_port()), "env": array(env_var()), "resources": resources(),
            "volumeMounts": array(volume_mount()),
            "livenessProbe": probe(), "readinessProbe": probe(), "startupProbe": probe(),
            "lifecycle": obj(
                json!({"postStart": lifecycle_handler(), "preStop": lifecycle_handler(), "stopSignal": string()}),
                &[],
            ),
            "imagePullPolicy": enumeration(&["Always", "Never", "IfNotPresent"]),
            "securityContext": security_context(),
            "terminationMessagePolicy": enumeration(&["File", "FallbackToLogsOnError"]),
        }),
        &["name"],
    );
    open_fields(
        &mut s,
        "envFrom resizePolicy restartPolicy restartPolicyRules volumeDevices terminationMessagePath stdin \
        stdinOnce tty",
    );
    s
}

/// A SidecarSet container: a core/v1 Container plus Kruise's fields, which the CRD schema already checks.
pub fn sidecar_container() -> Value {
    let mut s = container();
    open_fields(
        &mut s,
        "podInjectPolicy upgradeStrategy shareVolumePolicy shareVolumeDevicePolicy transferEnv resourcesPolicy",
    );
    s
}

/// core/v1 Volume.
pub fn volume() -> Value {
    let mut s = obj(
        json!({
            "name": string(),
            "emptyDir": obj(json!({"medium": string(), "sizeLimit": int_or_string()}), &[]),
            "configMap": obj(
                json!({
                    "name": string(), "defaultMode": int32(), "optional": boolean(),
                    "items": array(obj(
                        json!({"key": string(), "path": string(), "mode": int32()}),
                        &["key", "path"],
                    )),
                }),
                &[],
            ),
        }),
        &["name"],
    );
    open_fields(
        &mut s,
        "awsElasticBlockStore azureDisk azureFile cephfs cinder csi downwardAPI ephemeral fc flexVolume flocker \
        gcePersistentDisk gitRepo glusterfs hostPath image iscsi nfs persistentVolumeClaim photonPersistentDisk \
        portworxVolume projected quobyte rbd scaleIO secret storageos vsphereVolume",
    );
    s
}

/// core/v1 PodTemplateSpec.
pub fn pod_template() -> Value {
    let mut spec = obj(
        json!({
            "containers": array(container()), "initContainers": array(container()), "volumes": array(volume()),
            "terminationGracePeriodSeconds": int64(), "securityContext": pod_security_context(),
            "restartPolicy": enumeration(&["Always", "OnFailure", "Never"]),
            "serviceAccountName": string(), "automountServiceAccountToken": boolean(),
            "shareProcessNamespace": boolean(),
        }),
        &["containers"],
    );
    open_fields(
        &mut spec,
        "activeDeadlineSeconds affinity dnsConfig dnsPolicy enableServiceLinks ephemeralContainers hostAliases \
        hostIPC hostNetwork hostPID hostUsers hostname hostnameOverride imagePullSecrets nodeName nodeSelector \
        os overhead preemptionPolicy priority priorityClassName readinessGates resourceClaims resources \
        runtimeClassName schedulerName schedulingGates serviceAccount setHostnameAsFQDN subdomain tolerations \
        topologySpreadConstraints",
    );
    obj(json!({"metadata": object_meta(), "spec": spec}), &[])
}

/// core/v1 ConfigMap.
pub fn config_map() -> Value {
    obj(
        json!({
            "apiVersion": {"type": "string", "enum": ["v1"]}, "kind": {"type": "string", "enum": ["ConfigMap"]},
            "metadata": object_meta(), "data": string_map(), "binaryData": string_map(), "immutable": boolean(),
        }),
        &["apiVersion", "kind", "metadata"],
    )
}
