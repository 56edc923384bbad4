//! Dependencies between services (`depends_on`): which manifests name an
//! unknown service, take part in a cycle or need the GPU while depending on
//! another GPU service, the order to start in, and who depends on whom. Pure.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::manifest::{DependencyCondition, Manifest};

pub type Services = BTreeMap<String, Arc<Manifest>>;

/// Every service whose dependencies cannot be satisfied, with the reason:
/// an unknown (or itself unusable) dependency, a cycle, named in full, or
/// (for a GPU service) a dependency that also needs the GPU.
pub fn problems(services: &Services) -> BTreeMap<String, String> {
    let mut bad: BTreeMap<String, String> = BTreeMap::new();
    for cycle in cycles(services) {
        let path = cycle.iter().chain(cycle.first()).cloned().collect::<Vec<_>>().join(" -> ");
        for name in &cycle {
            bad.entry(name.clone()).or_insert_with(|| format!("dependency cycle: {path}"));
        }
    }
    for (name, m) in services {
        if !m.gpu_required || bad.contains_key(name) {
            continue;
        }
        if let Some(chain) = gpu_chain(services, name) {
            let holder = chain.last().map(String::as_str).unwrap_or_default();
            let via = match chain.len() {
                ..=2 => String::new(),
                _ => format!(" (through {})", chain.join(" -> ")),
            };
            bad.insert(
                name.clone(),
                format!(
                    "'{name}' needs the GPU and depends on '{holder}'{via}, which also needs the GPU: under the \
                     one-GPU-service-at-a-time policy they can never run together"
                ),
            );
        }
    }
    // A service depending on an unknown or unusable one is unusable too.
    loop {
        let before = bad.len();
        for (name, m) in services {
            if bad.contains_key(name) {
                continue;
            }
            if let Some(dep) = m.depends_on.iter().find(|d| !services.contains_key(&d.name)) {
                bad.insert(name.clone(), format!("depends on unknown service '{}'", dep.name));
            } else if let Some(dep) = m.depends_on.iter().find(|d| bad.contains_key(&d.name)) {
                bad.insert(name.clone(), format!("depends on '{}', which cannot be used", dep.name));
            }
        }
        if bad.len() == before {
            return bad;
        }
    }
}

/// The shortest chain `name -> … -> x` to a dependency `x` of `name`, direct
/// or not, that needs the GPU.
fn gpu_chain(services: &Services, name: &str) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([name]);
    while let Some(current) = queue.pop_front() {
        for dep in services.get(current).map(|m| m.depends_on.as_slice()).unwrap_or_default() {
            let dep = dep.name.as_str();
            if dep == name || parent.contains_key(dep) {
                continue;
            }
            parent.insert(dep, current);
            if services.get(dep).is_some_and(|m| m.gpu_required) {
                let mut chain = vec![dep.to_string()];
                let mut at = dep;
                while let Some(&up) = parent.get(at) {
                    chain.push(up.to_string());
                    at = up;
                }
                chain.reverse();
                return Some(chain);
            }
            queue.push_back(dep);
        }
    }
    None
}

/// Each cycle once, as the list of its members in dependency order.
fn cycles(services: &Services) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        services: &Services,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        match marks.get(name) {
            Some(Mark::Done) => return,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|n| n == name).unwrap_or(0);
                found.push(stack[start..].to_vec());
                return;
            }
            None => {}
        }
        let Some(m) = services.get(name) else { return };
        marks.insert(name.to_string(), Mark::Visiting);
        stack.push(name.to_string());
        for dep in &m.depends_on {
            visit(&dep.name, services, marks, stack, found);
        }
        stack.pop();
        marks.insert(name.to_string(), Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = Vec::new();
    for name in services.keys() {
        visit(name, services, &mut marks, &mut Vec::new(), &mut found);
    }
    found
}

/// The condition a dependent waits for: as written, else `healthy` when the
/// dependency has a health check and `started` when it has none.
pub fn condition(dependency: &Manifest, written: Option<DependencyCondition>) -> DependencyCondition {
    written.unwrap_or(if dependency.has_health_check() {
        DependencyCondition::Healthy
    } else {
        DependencyCondition::Started
    })
}

/// How deep `name` sits in the dependency graph: 0 for a service without
/// dependencies, else one more than its deepest dependency. Stopping in
/// descending depth stops dependents before what they depend on.
pub fn depth(services: &Services, name: &str) -> usize {
    fn go(services: &Services, name: &str, seen: &mut BTreeSet<String>) -> usize {
        if !seen.insert(name.to_string()) {
            return 0; // cycles are rejected at discovery; never loop here
        }
        let d = services
            .get(name)
            .map(|m| m.depends_on.iter().map(|d| go(services, &d.name, seen) + 1).max().unwrap_or(0))
            .unwrap_or(0);
        seen.remove(name);
        d
    }
    go(services, name, &mut BTreeSet::new())
}

/// Services that depend on `name`, directly or not, deepest first (the
/// order to stop them in).
pub fn dependents(services: &Services, name: &str) -> Vec<String> {
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut frontier = vec![name.to_string()];
    while let Some(current) = frontier.pop() {
        for (other, m) in services {
            if m.depends_on.iter().any(|d| d.name == current) && found.insert(other.clone()) {
                frontier.push(other.clone());
            }
        }
    }
    let mut list: Vec<String> = found.into_iter().collect();
    list.sort_by_key(|n| std::cmp::Reverse(depth(services, n)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Paths;
    use std::path::Path;

    fn service(name: &str, deps: &[&str], gpu: bool) -> (String, Arc<Manifest>) {
        let text = format!("name: {name}\ncommand: [x]\ngpu_required: {gpu}\ndepends_on: [{}]\n", deps.join(", "));
        let m = crate::manifest::parse(Path::new("/s/service.yaml"), &text, Paths::Confined, &|p| Some(p.into()));
        (name.to_string(), Arc::new(m.unwrap()))
    }

    fn services(spec: &[(&str, &[&str])]) -> Services {
        spec.iter().map(|(name, deps)| service(name, deps, false)).collect()
    }

    #[test]
    fn cycles_are_named_and_spread_to_dependents() {
        let s = services(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"]), ("e", &[]), ("f", &["zzz"])]);
        let p = problems(&s);
        assert_eq!(p["a"], "dependency cycle: a -> b -> c -> a");
        assert!(p["b"].starts_with("dependency cycle"));
        assert_eq!(p["d"], "depends on 'a', which cannot be used");
        assert_eq!(p["f"], "depends on unknown service 'zzz'");
        assert!(!p.contains_key("e"));
    }

    #[test]
    fn depth_and_dependents() {
        let s = services(&[("db", &[]), ("api", &["db"]), ("web", &["api", "db"]), ("lone", &[])]);
        assert_eq!(depth(&s, "db"), 0);
        assert_eq!(depth(&s, "web"), 2);
        assert_eq!(dependents(&s, "db"), vec!["web", "api"]);
        assert!(dependents(&s, "lone").is_empty());
    }

    #[test]
    fn a_gpu_service_may_not_depend_on_another_gpu_service() {
        let s: Services = [
            service("llm", &[], true),
            service("ui", &["llm"], true),
            service("proxy", &["llm"], false),
            service("app", &["proxy"], true),
            service("web", &["ui"], false),
            service("cpu", &["proxy"], false),
        ]
        .into_iter()
        .collect();
        let p = problems(&s);
        assert_eq!(
            p["ui"],
            "'ui' needs the GPU and depends on 'llm', which also needs the GPU: under the \
             one-GPU-service-at-a-time policy they can never run together"
        );
        assert!(
            p["app"].starts_with("'app' needs the GPU and depends on 'llm' (through app -> proxy -> llm)"),
            "{p:?}"
        );
        assert_eq!(p["web"], "depends on 'ui', which cannot be used");
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["app", "ui", "web"], "GPU holders and CPU users stay valid");
    }
}
