//! The Kubernetes manifests of `deploy/kubernetes` (deploy/README.md), proven in the two ways
//! possible without a cluster:
//!
//! - rendered with `kubectl kustomize` (every overlay, and the optional components) and validated
//!   against Kubernetes' schemas (kubernetes-validate, pinned in scripts/requirements.txt) and the
//!   CRD schemas shipped in `deploy/kubernetes/schemas`; a deliberately broken manifest fails,
//!   naming its file and fields;
//! - cross-checked against the real `rewardfleet` binary and a real `nats-server`: the rendered
//!   Deployments and StatefulSets start here with their own commands, arguments, environment and
//!   configuration files (ports remapped to free ones), and then every probe must answer where the
//!   manifest says, every Service port must reach a listening port, every KEDA trigger must name a
//!   stream and consumer that exist on the server's monitoring endpoint with a lag that rises
//!   while jobs queue and falls when workers drain them, and every process must stop within its
//!   grace period.
//!
//! Workers whose models ask for `cuda:0` cannot load here (no GPU): for them only `rewardfleet
//! check` runs, and their trigger's consumer is compared with the name the binary's queue gives
//! it. Without kubectl, each test says why it skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::deploy::{
    LocalFleet, Object, Problem, Rendered, lines, missing_tools, models_volume, mutate, render,
    static_problems,
};

const OVERLAYS: [&str; 3] = ["overlays/dev", "overlays/prod", "overlays/gpu"];

/// The components an overlay may add: the ServiceMonitor, and the HPA in place of each pool's
/// ScaledObject.
const OPTIONAL: [&str; 4] = [
    "components/servicemonitor",
    "components/hpa/cpu",
    "components/hpa/judge",
    "components/hpa/gpu",
];

/// The models volume's claim, which a local folder stands in for.
const MODELS_CLAIM: &str = "rewardfleet-models";

fn skipped() -> bool {
    match missing_tools() {
        Some(reason) => {
            eprintln!("skipped: {reason}");
            true
        }
        None => false,
    }
}

fn assert_none(what: &str, problems: &[Problem]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n{}",
        problems.len(),
        lines(problems)
    );
}

/// An object without kustomize's origin annotation (which says where it came from, not what it is).
fn content(o: &Object) -> serde_json::Value {
    let mut v = o.value.clone();
    if let Some(a) = v["metadata"]["annotations"].as_object_mut() {
        a.remove("config.kubernetes.io/origin");
    }
    v
}

#[test]
fn every_overlay_renders_validates_and_agrees_with_its_configurations() {
    if skipped() {
        return;
    }
    let mut rendered: Vec<Rendered> = OVERLAYS.iter().map(|o| render(o, &[o], &[])).collect();
    rendered.push(render(
        "overlays/gpu with every optional component",
        &["overlays/gpu"],
        &OPTIONAL,
    ));
    for r in &rendered {
        eprintln!(
            "{}: {} objects valid against Kubernetes {} and deploy/kubernetes/schemas",
            r.label,
            r.objects.len(),
            r.kubernetes_version
        );
        assert_none(&format!("{}: validation", r.label), &r.problems);
        // Every custom resource of the manifests has its schema in the repository.
        assert!(
            r.skipped.is_empty(),
            "{}: objects no schema covers:\n{}",
            r.label,
            r.skipped.join("\n")
        );
        assert_none(
            &format!("{}: manifests against their configurations", r.label),
            &static_problems(&r.objects),
        );
    }
    let [dev, prod, gpu, optional] = &rendered[..] else {
        unreachable!()
    };
    let count = |r: &Rendered, kind: &str| r.objects.iter().filter(|o| o.kind() == kind).count();
    // dev: one NATS server, one gateway, one worker.
    assert_eq!(dev.get("StatefulSet", "nats").value["spec"]["replicas"], 1);
    assert_eq!(count(dev, "Deployment"), 2);
    // prod: a NATS cluster of three on volumes of their own, one server per node; the cpu and
    // judge pools, the judge pool free to scale to zero.
    let nats = &prod.get("StatefulSet", "nats").value["spec"];
    assert_eq!(nats["replicas"], 3);
    assert_eq!(nats["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    assert!(nats["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(
        prod.get("ScaledObject", "rewardfleet-worker-judge").value["spec"]["minReplicaCount"],
        0
    );
    // gpu: prod and a pool of workers that hold a GPU each. Every object of prod is in gpu as
    // it is: the live test of gpu covers prod's.
    for o in &prod.objects {
        let same = gpu
            .objects
            .iter()
            .any(|g| g.kind() == o.kind() && g.name() == o.name() && content(g) == content(o));
        assert!(
            same,
            "{} of overlays/prod is not in overlays/gpu as it is",
            o.id()
        );
    }
    let worker = &gpu.get("Deployment", "rewardfleet-worker-gpu").value;
    let limits = &worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["nvidia.com/gpu"], "1");
    // The optional components: a ServiceMonitor, and an HPA in place of every ScaledObject.
    assert_eq!(count(optional, "ServiceMonitor"), 1);
    assert_eq!(count(optional, "ScaledObject"), 0);
    assert_eq!(count(optional, "HorizontalPodAutoscaler"), 3);
    for kind in [
        "StatefulSet",
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PersistentVolumeClaim",
    ] {
        assert!(count(gpu, kind) > 0, "overlays/gpu has no {kind}");
    }
    assert_eq!(count(gpu, "ScaledObject"), 3);
}

#[test]
fn a_broken_manifest_fails_validation_naming_the_file_and_fields() {
    if skipped() {
        return;
    }
    let r = render("testdata/broken", &["testdata/broken"], &[]);
    let has = |file: &str, field: &str| {
        r.problems.iter().any(|p| {
            p.origin == format!("deploy/kubernetes/testdata/broken/{file}") && p.field == field
        })
    };
    for (file, field) in [
        // A misspelled field: Kubernetes would refuse it (strict field validation).
        (
            "worker.yaml",
            "spec.template.spec.terminationGracePeriodSecond",
        ),
        // A port as text.
        (
            "worker.yaml",
            "spec.template.spec.containers[0].ports[0].containerPort",
        ),
        // A KEDA trigger's metadata holds strings only (the CRD's schema).
        (
            "scaledobject.yaml",
            "spec.triggers[0].metadata.lagThreshold",
        ),
    ] {
        assert!(
            has(file, field),
            "no problem names {file} and {field}; the problems:\n{}",
            lines(&r.problems)
        );
    }
}

/// Starts the rendered fleet of `r` here, with the models volume filled.
async fn start(r: &Rendered, dir: &std::path::Path) -> LocalFleet {
    let models = models_volume(dir);
    LocalFleet::start(&r.objects, &[(MODELS_CLAIM, models.as_path())]).await
}

/// Every live check on `r`'s fleet, then the lag of every KEDA-scaled pool, then the stop.
async fn runs_as_rendered(r: &Rendered) {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = start(r, dir.path()).await;
    assert_none(
        &format!("{}: manifests against the running fleet", r.label),
        &fleet.problems(&r.objects).await,
    );
    assert_none(
        &format!("{}: KEDA's lag", r.label),
        &fleet.lag_rises_and_falls(&r.objects).await,
    );
    for note in &fleet.notes {
        eprintln!("{}: {note}", r.label);
    }
    assert_none(
        &format!("{}: stopping within the grace periods", r.label),
        &fleet.stop(&r.objects),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dev_overlay_runs_as_rendered() {
    if skipped() {
        return;
    }
    runs_as_rendered(&render("overlays/dev", &["overlays/dev"], &[])).await;
}

/// overlays/gpu holds every object of overlays/prod as it is (the first test checks it), so this
/// covers prod too: a NATS cluster of three, the cpu and judge pools, and the gpu pool's gateway;
/// the gpu pool's workers are checked with `rewardfleet check` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gpu_overlay_runs_as_rendered_but_for_its_gpu_workers() {
    if skipped() {
        return;
    }
    runs_as_rendered(&render("overlays/gpu", &["overlays/gpu"], &[])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifests_that_contradict_the_binary_fail_naming_the_file_and_field() {
    if skipped() {
        return;
    }
    let r = render("overlays/dev", &["overlays/dev"], &[]);
    let dir = tempfile::tempdir().unwrap();
    let fleet = start(&r, dir.path()).await;
    assert_none(
        "overlays/dev as rendered",
        &fleet.problems(&r.objects).await,
    );
    let expect = |problems: &[Problem], file: &str, field: &str, words: &str| {
        assert!(
            problems
                .iter()
                .any(|p| p.origin == format!("deploy/kubernetes/{file}")
                    && p.field == field
                    && p.message.contains(words)),
            "no problem names {file}, {field} and says {words:?}; the problems:\n{}",
            lines(problems)
        );
    };

    // A KEDA trigger on a consumer the binary does not create.
    let changed = mutate(&r.objects, "ScaledObject", "rewardfleet-worker-cpu", |o| {
        o["spec"]["triggers"][0]["metadata"]["consumer"] = "rf-workers-gpu".into();
    });
    expect(
        &fleet.problems(&changed).await,
        "pools/cpu/scaledobject.yaml",
        "spec.triggers[0].metadata.consumer",
        "has no consumer rf-workers-gpu",
    );

    // A probe on a port nothing listens on.
    let changed = mutate(&r.objects, "Deployment", "rewardfleet-worker-cpu", |o| {
        o["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] =
            8081.into();
    });
    expect(
        &fleet.problems(&changed).await,
        "pools/cpu/worker.yaml",
        "spec.template.spec.containers[0].readinessProbe.httpGet.port",
        "nothing listens on port 8081",
    );

    // A probe on the wrong server: the metrics endpoint has no /readyz.
    let changed = mutate(&r.objects, "Deployment", "rewardfleet-worker-cpu", |o| {
        o["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] =
            "metrics".into();
    });
    expect(
        &fleet.problems(&changed).await,
        "pools/cpu/worker.yaml",
        "spec.template.spec.containers[0].readinessProbe.httpGet.path",
        "GET /readyz on port 9464 answered 404",
    );

    // A Service port aimed where nothing listens.
    let changed = mutate(&r.objects, "Service", "rewardfleet-gateway-cpu", |o| {
        o["spec"]["ports"][1]["targetPort"] = 9465.into();
    });
    expect(
        &fleet.problems(&changed).await,
        "pools/cpu/gateway.yaml",
        "spec.ports[1].targetPort",
        "nothing listens there",
    );

    // A grace period shorter than the drain deadline of the configuration.
    let changed = mutate(&r.objects, "Deployment", "rewardfleet-worker-cpu", |o| {
        o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20.into();
    });
    expect(
        &static_problems(&changed),
        "pools/cpu/worker.yaml",
        "spec.template.spec.terminationGracePeriodSeconds",
        "is not above worker.drain_timeout (25 s)",
    );

    // A lag threshold that is not the workers' capacity.
    let changed = mutate(&r.objects, "ScaledObject", "rewardfleet-worker-cpu", |o| {
        o["spec"]["triggers"][0]["metadata"]["lagThreshold"] = "100".into();
    });
    expect(
        &static_problems(&changed),
        "pools/cpu/scaledobject.yaml",
        "spec.triggers[0].metadata.lagThreshold",
        "worker.max_concurrent_jobs",
    );

    // A worker without the variable its configuration names for the NATS token: the binary reads
    // it at start, and would exit.
    let changed = mutate(&r.objects, "Deployment", "rewardfleet-worker-cpu", |o| {
        let env = o["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array_mut()
            .unwrap();
        env.retain(|e| e["name"] != "NATS_TOKEN");
    });
    expect(
        &static_problems(&changed),
        "pools/cpu/worker.yaml",
        "spec.template.spec.containers[0].env",
        "names $NATS_TOKEN, which the container does not set",
    );

    // A NetworkPolicy that lets anyone reach the gateways.
    let changed = mutate(&r.objects, "NetworkPolicy", "rewardfleet-gateway", |o| {
        o["spec"]["ingress"][0]["from"] = serde_json::json!([]);
    });
    expect(
        &static_problems(&changed),
        "pools/cpu/gateway.yaml",
        "spec.template.metadata.labels",
        "let any pod reach port 50051, not only trainers",
    );

    assert_none("stopping", &fleet.stop(&r.objects));
}
