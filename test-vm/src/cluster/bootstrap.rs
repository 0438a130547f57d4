//! What `kubeadm init` does through the API beyond its phases, and what makes the cluster
//! joinable from a guest: the admin group's binding, `cluster-info` naming the guest
//! endpoint with a valid signature, and the `default` ServiceAccount.

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, Error};

use super::health::chain;
use super::pki::{BootstrapToken, jws_is_valid, jws_key};

/// kubeadm's `kubeadm:cluster-admins` ClusterRoleBinding (group → cluster-admin), which gives
/// `admin.conf`'s user its rights. `kubeadm init` creates it with `super-admin.conf` when
/// `admin.conf` is first used; with `--kubeconfig` pointing elsewhere no phase does, so this
/// does it the same way (idempotent).
pub async fn ensure_admin_binding(super_admin: &Client) -> Result<(), String> {
    const NAME: &str = "kubeadm:cluster-admins";
    let crb = ClusterRoleBinding {
        metadata: ObjectMeta { name: Some(NAME.into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: NAME.into(),
            namespace: None,
        }]),
    };
    match Api::<ClusterRoleBinding>::all(super_admin.clone()).create(&PostParams::default(), &crb).await {
        Ok(_) => Ok(()),
        Err(Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(format!("creating ClusterRoleBinding {NAME}: {}", chain(&e))),
    }
}

/// The server `cluster-info`'s kubeconfig names.
fn named_server(kubeconfig: &str) -> Result<String, String> {
    let kc = Kubeconfig::from_yaml(kubeconfig).map_err(|e| format!("cluster-info's kubeconfig: {}", chain(&e)))?;
    kc.clusters
        .into_iter()
        .next()
        .and_then(|c| c.cluster)
        .and_then(|c| c.server)
        .ok_or_else(|| "cluster-info's kubeconfig names no server".to_owned())
}

/// One step towards a `cluster-info` a guest can use: `Ok` once it names `guest_server` and
/// carries a valid signature for `token`; else what is missing. kubeadm's bootstrap-token
/// phase builds it from the `--kubeconfig` it was given, i.e. the host's 127.0.0.1, and
/// `kubeadm join` talks to the server named there after discovery; so a `cluster-info` naming
/// `host_server` is rewritten here (only that server line), and the bootstrap signer re-signs
/// the changed content.
pub async fn cluster_info_step(
    client: &Client,
    host_server: &str,
    guest_server: &str,
    token: &BootstrapToken,
) -> Result<(), String> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), "kube-public");
    let mut cm = match api.get_opt("cluster-info").await {
        Ok(Some(cm)) => cm,
        Ok(None) => return Err("kube-public/cluster-info does not exist".into()),
        Err(e) => return Err(format!("reading kube-public/cluster-info: {}", chain(&e))),
    };
    let data = cm.data.get_or_insert_default();
    let kubeconfig = data.get("kubeconfig").cloned().ok_or("cluster-info has no `kubeconfig` key")?;
    let server = named_server(&kubeconfig)?;
    if server == host_server {
        let from = format!("server: {host_server}\n");
        if kubeconfig.matches(&from).count() != 1 {
            return Err(format!("cluster-info's kubeconfig has no single `{}` line", from.trim_end()));
        }
        let rewritten = kubeconfig.replacen(&from, &format!("server: {guest_server}\n"), 1);
        data.insert("kubeconfig".into(), rewritten);
        // The object's resourceVersion is kept: if the signer wrote in between, this is a
        // conflict and the next step reads again.
        return match api.replace("cluster-info", &PostParams::default(), &cm).await {
            Ok(_) => Err(format!("cluster-info rewritten to name {guest_server}; waiting for its signature")),
            Err(e) => Err(format!("rewriting kube-public/cluster-info: {}", chain(&e))),
        };
    }
    if server != guest_server {
        return Err(format!("cluster-info names {server}, neither {guest_server} nor {host_server}"));
    }
    let key = jws_key(token.id());
    match data.get(&key) {
        None => Err(format!("cluster-info names {guest_server} but has no {key} signature yet")),
        Some(jws) if jws_is_valid(jws, &kubeconfig, token.id(), token.secret()) => Ok(()),
        Some(_) => Err(format!("cluster-info's {key} does not verify (yet) for its current content")),
    }
}

/// The `default` ServiceAccount of the `default` namespace exists (pods are refused before).
pub async fn default_service_account(client: &Client) -> Result<(), String> {
    match Api::<ServiceAccount>::namespaced(client.clone(), "default").get_opt("default").await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("ServiceAccount default/default does not exist yet".into()),
        Err(e) => Err(format!("reading ServiceAccount default/default: {}", chain(&e))),
    }
}

/// The API server's `gitVersion` is the version the cluster is configured for.
pub async fn check_version(client: &Client, want: &str) -> Result<(), String> {
    match client.apiserver_version().await {
        Ok(info) if info.git_version == want => Ok(()),
        Ok(info) => Err(format!("reports {} but the cluster is configured for {want}", info.git_version)),
        Err(e) => Err(format!("GET /version: {}", chain(&e))),
    }
}
