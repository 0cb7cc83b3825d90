//! The API's routes: Cloud Hypervisor's v1 paths, methods and bodies, each turned into one
//! [`VmmAction`]; and the answers turned back into responses with Cloud Hypervisor's shapes.
//! docs/openapi.yaml describes exactly these routes (a test checks both ways).

use vmm::config::VmConfig;
use vmm::control::actions::{ActionErrorKind, ActionOutput, ActionResult, VmmAction};

use super::http::{Request, Response};

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET vmm.ping`.
    VmmPing,
    /// `PUT vmm.shutdown`.
    VmmShutdown,
    /// `PUT vm.create` with a `VmConfig` body.
    VmCreate,
    /// `PUT vm.boot`.
    VmBoot,
    /// `PUT vm.pause`.
    VmPause,
    /// `PUT vm.resume`.
    VmResume,
    /// `PUT vm.shutdown`.
    VmShutdown,
    /// `PUT vm.reboot`.
    VmReboot,
    /// `PUT vm.power-button`.
    VmPowerButton,
    /// `PUT vm.delete`.
    VmDelete,
    /// `GET vm.info`.
    VmInfo,
    /// `GET vm.counters`.
    VmCounters,
    /// `GET /metrics`: the counters as Prometheus text.
    Metrics,
    /// `PUT vm.snapshot` with a `SnapshotConfig` body.
    VmSnapshot,
    /// `PUT vm.restore` with a `RestoreConfig` body.
    VmRestore,
}

/// Every route: path, method, endpoint.
pub const ROUTES: &[(&str, &str, Endpoint)] = &[
    ("/api/v1/vmm.ping", "GET", Endpoint::VmmPing),
    ("/api/v1/vmm.shutdown", "PUT", Endpoint::VmmShutdown),
    ("/api/v1/vm.create", "PUT", Endpoint::VmCreate),
    ("/api/v1/vm.boot", "PUT", Endpoint::VmBoot),
    ("/api/v1/vm.pause", "PUT", Endpoint::VmPause),
    ("/api/v1/vm.resume", "PUT", Endpoint::VmResume),
    ("/api/v1/vm.shutdown", "PUT", Endpoint::VmShutdown),
    ("/api/v1/vm.reboot", "PUT", Endpoint::VmReboot),
    ("/api/v1/vm.power-button", "PUT", Endpoint::VmPowerButton),
    ("/api/v1/vm.delete", "PUT", Endpoint::VmDelete),
    ("/api/v1/vm.info", "GET", Endpoint::VmInfo),
    ("/api/v1/vm.counters", "GET", Endpoint::VmCounters),
    ("/metrics", "GET", Endpoint::Metrics),
    ("/api/v1/vm.snapshot", "PUT", Endpoint::VmSnapshot),
    ("/api/v1/vm.restore", "PUT", Endpoint::VmRestore),
];

/// The Prometheus text exposition format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Where a request goes.
#[derive(Debug)]
pub enum Routed {
    /// To the control loop; render its answer as `endpoint` does.
    Act(VmmAction, Endpoint),
    /// Answered here (unknown path, wrong method, bad body).
    Answer(Response),
}

/// Routes a request.
pub fn route(req: &Request) -> Routed {
    let on_path: Vec<&(&str, &str, Endpoint)> =
        ROUTES.iter().filter(|(p, _, _)| *p == req.path).collect();
    if on_path.is_empty() {
        return Routed::Answer(Response::errors(
            404,
            &[format!("no such endpoint: {}", req.path)],
        ));
    }
    let Some((_, _, endpoint)) = on_path.iter().find(|(_, m, _)| *m == req.method) else {
        let allow: Vec<&str> = on_path.iter().map(|(_, m, _)| *m).collect();
        let mut r = Response::errors(
            405,
            &[format!(
                "{} does not take {} (allowed: {})",
                req.path,
                req.method,
                allow.join(", ")
            )],
        );
        r.allow = Some(allow.join(", "));
        return Routed::Answer(r);
    };
    match action(*endpoint, req) {
        Ok(action) => Routed::Act(action, *endpoint),
        Err(response) => Routed::Answer(response),
    }
}

fn bad_request(message: String) -> Response {
    Response::errors(400, &[message])
}

/// The action of a route, from its body.
fn action(endpoint: Endpoint, req: &Request) -> Result<VmmAction, Response> {
    if endpoint == Endpoint::VmCreate {
        if req.body.is_empty() {
            return Err(bad_request("vm.create needs a VmConfig body".into()));
        }
        let config: VmConfig = serde_json::from_slice(&req.body)
            .map_err(|e| bad_request(format!("invalid VmConfig: {e}")))?;
        return Ok(VmmAction::CreateVm(Box::new(config)));
    }
    if let Some(action) = snapshot_action(endpoint, req)? {
        return Ok(action);
    }
    if !req.body.is_empty() {
        return Err(bad_request(format!("{} takes no body", req.path)));
    }
    Ok(match endpoint {
        Endpoint::VmmPing => VmmAction::Ping,
        Endpoint::VmmShutdown => VmmAction::ShutdownVmm,
        Endpoint::VmCreate | Endpoint::VmBoot => VmmAction::BootVm,
        Endpoint::VmPause => VmmAction::PauseVm,
        Endpoint::VmResume => VmmAction::ResumeVm,
        Endpoint::VmShutdown => VmmAction::ShutdownVm,
        Endpoint::VmReboot => VmmAction::RebootVm,
        Endpoint::VmPowerButton => VmmAction::PowerButton,
        Endpoint::VmDelete => VmmAction::DeleteVm,
        Endpoint::VmInfo => VmmAction::VmInfo,
        Endpoint::VmCounters | Endpoint::Metrics => VmmAction::VmCounters,
        Endpoint::VmSnapshot | Endpoint::VmRestore => {
            return Err(bad_request(format!("{} needs a body", req.path)))
        }
    })
}

/// `vm.snapshot` and `vm.restore` with their bodies (None for other endpoints).
fn snapshot_action(endpoint: Endpoint, req: &Request) -> Result<Option<VmmAction>, Response> {
    let what = match endpoint {
        Endpoint::VmSnapshot => "VmSnapshotConfig",
        Endpoint::VmRestore => "RestoreConfig",
        _ => return Ok(None),
    };
    if req.body.is_empty() {
        return Err(bad_request(format!("{} needs a {what} body", req.path)));
    }
    let invalid = |e: serde_json::Error| bad_request(format!("invalid {what}: {e}"));
    Ok(Some(match endpoint {
        Endpoint::VmSnapshot => {
            VmmAction::SnapshotVm(serde_json::from_slice(&req.body).map_err(invalid)?)
        }
        _ => VmmAction::RestoreVm(serde_json::from_slice(&req.body).map_err(invalid)?),
    }))
}

/// The HTTP status of a failed action (Cloud Hypervisor's: 404 when there is no VM, 405 when
/// its state forbids the action, 400 for a bad request, 500 for the VMM's own failures).
fn status_of(kind: ActionErrorKind) -> u16 {
    match kind {
        ActionErrorKind::NotFound => 404,
        ActionErrorKind::InvalidState => 405,
        ActionErrorKind::BadRequest => 400,
        ActionErrorKind::Internal => 500,
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::json(body),
        Err(e) => Response::errors(500, &[format!("unable to serialize the answer: {e}")]),
    }
}

/// The response to an action's answer.
pub fn render(endpoint: Endpoint, result: ActionResult) -> Response {
    match result {
        Err(e) => Response::errors(status_of(e.kind()), &e.messages()),
        Ok(ActionOutput::Done) => Response::no_content(),
        Ok(ActionOutput::Ping(ping)) => json(&ping),
        Ok(ActionOutput::Info(info)) => json(&info),
        Ok(ActionOutput::Counters(c)) if endpoint == Endpoint::Metrics => {
            Response::text(PROMETHEUS_TEXT, c.to_prometheus())
        }
        Ok(ActionOutput::Counters(c)) => json(&c.to_map()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use vmm::control::actions::ActionError;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            has_body: !body.is_empty(),
            keep_alive: true,
        }
    }

    fn answer(r: Routed) -> Response {
        match r {
            Routed::Answer(resp) => resp,
            Routed::Act(a, _) => panic!("routed to {a:?}"),
        }
    }

    #[test]
    fn test_route_known_paths_to_actions() {
        assert!(matches!(
            route(&req("GET", "/api/v1/vmm.ping", "")),
            Routed::Act(VmmAction::Ping, Endpoint::VmmPing)
        ));
        assert!(matches!(
            route(&req("PUT", "/api/v1/vm.pause", "")),
            Routed::Act(VmmAction::PauseVm, _)
        ));
        assert!(matches!(
            route(&req("GET", "/metrics", "")),
            Routed::Act(VmmAction::VmCounters, Endpoint::Metrics)
        ));
    }

    #[test]
    fn test_route_create_with_config() {
        let body = r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":2,"max_vcpus":2}}"#;

        let Routed::Act(VmmAction::CreateVm(config), _) =
            route(&req("PUT", "/api/v1/vm.create", body))
        else {
            panic!("not routed to create");
        };

        assert_eq!(config.cpus.boot_vcpus, 2);
    }

    #[test]
    fn test_route_create_unknown_field_is_400_naming_it() {
        let body = r#"{"payload":{"kernel":"/k"},"balloon":{"size":0}}"#;

        let r = answer(route(&req("PUT", "/api/v1/vm.create", body)));

        assert_eq!(r.status, 400);
        let text = String::from_utf8(r.body).expect("utf8");
        assert!(text.contains("unknown field `balloon`"), "{text}");
        assert!(!r.close);
    }

    #[test]
    fn test_route_errors_unknown_path_wrong_method_body_where_none() {
        assert_eq!(
            answer(route(&req("GET", "/api/v1/vm.nope", ""))).status,
            404
        );
        let wrong = answer(route(&req("POST", "/api/v1/vm.info", "")));
        assert_eq!((wrong.status, wrong.allow.as_deref()), (405, Some("GET")));
        assert_eq!(
            answer(route(&req("PUT", "/api/v1/vm.boot", "{}"))).status,
            400
        );
        assert_eq!(
            answer(route(&req("PUT", "/api/v1/vm.create", ""))).status,
            400
        );
        assert_eq!(
            answer(route(&req("PUT", "/api/v1/vm.create", "{"))).status,
            400
        );
    }

    /// (path, METHOD) of every operation in docs/openapi.yaml.
    fn spec_operations() -> BTreeSet<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("read docs/openapi.yaml");
        let spec: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("parse the spec");
        let paths = spec["paths"].as_mapping().expect("the spec has paths");
        let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
        let mut ops = BTreeSet::new();
        for (path, item) in paths {
            let path = path.as_str().expect("path is a string");
            for (key, _) in item.as_mapping().expect("path item is a mapping") {
                let key = key.as_str().expect("key is a string");
                if methods.contains(&key) {
                    ops.insert((path.to_string(), key.to_ascii_uppercase()));
                }
            }
        }
        ops
    }

    #[test]
    fn test_routes_and_openapi_spec_agree_both_ways() {
        let spec = spec_operations();
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(p, m, _)| (p.to_string(), m.to_string()))
            .collect();

        let unrouted: Vec<_> = spec.difference(&routed).collect();
        let undocumented: Vec<_> = routed.difference(&spec).collect();

        assert!(
            unrouted.is_empty(),
            "in docs/openapi.yaml, not routed: {unrouted:?}"
        );
        assert!(
            undocumented.is_empty(),
            "routed, not in docs/openapi.yaml: {undocumented:?}"
        );
        assert_eq!(spec.len(), 15);
    }

    #[test]
    fn test_render_errors_by_kind() {
        assert_eq!(
            render(Endpoint::VmInfo, Err(ActionError::NotCreated)).status,
            404
        );
        assert_eq!(
            render(Endpoint::VmPowerButton, Err(ActionError::NoPowerButton)).status,
            400
        );
        assert_eq!(render(Endpoint::VmBoot, Ok(ActionOutput::Done)).status, 204);
    }
}
