//! The API reference docs/scripting.md covers every registered function and is current.

use std::path::Path;

use pretext::script::{Host, HostConfig};

fn registered_names(host: &Host) -> Vec<String> {
    let mut names: Vec<String> = host
        .engine()
        .gen_fn_signatures(false)
        .iter()
        .map(|sig| {
            let name = sig.split('(').next().unwrap_or(sig);
            let name = name.rsplit("::").next().unwrap_or(name);
            let name = name.trim_start_matches("get$").trim_start_matches("set$");
            if name.starts_with("index$") {
                "[]".to_string()
            } else {
                name.to_string()
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_registered_function_is_documented_in_scripting_md() {
    let host = Host::new(HostConfig::default());
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/scripting.md"))
            .unwrap();
    let documented = host.docs().names();
    let names = registered_names(&host);
    assert!(names.len() > 60, "suspiciously few functions: {names:?}");
    for name in &names {
        assert!(
            documented.contains(&name.as_str()),
            "`{name}` is registered but has no doc record"
        );
        assert!(
            reference.contains(&format!("| `{name}` |")),
            "`{name}` missing from docs/scripting.md"
        );
    }
}

#[test]
fn scripting_md_is_the_current_generated_reference() {
    let host = Host::new(HostConfig::default());
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/scripting.md"))
            .unwrap();
    assert!(
        reference == host.docs().markdown(),
        "docs/scripting.md is stale: regenerate it with `pretext doc > docs/scripting.md`"
    );
}
