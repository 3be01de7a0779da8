//! The index body (`settings` + `mappings`) created for an index: PGSync's `setting`, a complete
//! `mappings` when given, otherwise node `transform.mapping` entries placed at each node's path
//! plus the document-level `mapping` merged at the root.

use super::resolve::{IndexPlan, PlanNode};
use serde_json::{json, Map, Value};

/// The body of the create-index request.
pub fn index_body(plan: &IndexPlan) -> Value {
    let spec = &plan.spec;
    let mut body = Map::new();
    if let Some(s) = &spec.setting {
        body.insert("settings".into(), json!({ "index": s }));
    }
    let mappings = match &spec.mappings {
        Some(m) => Some(m.clone()),
        None => {
            let mut props = node_properties(&plan.root, &spec.nodes);
            if let Some(extra) = &spec.mapping {
                for (k, v) in extra {
                    merge(props.entry(k.clone()).or_insert_with(|| json!({})), v);
                }
            }
            (!props.is_empty()).then(|| json!({ "properties": props }))
        }
    };
    if let Some(m) = mappings {
        body.insert("mappings".into(), m);
    }
    Value::Object(body)
}

fn node_properties(node: &PlanNode, spec: &super::model::NodeSpec) -> Map<String, Value> {
    let mut props = Map::new();
    if let Some(m) = &spec.transform.mapping {
        for (k, v) in m {
            props.insert(k.clone(), v.clone());
        }
    }
    for (c, cs) in node.children.iter().zip(&spec.children) {
        let child = node_properties(c, cs);
        if !child.is_empty() {
            let entry = props
                .entry(node.child_key(c).to_owned())
                .or_insert_with(|| json!({}));
            merge(entry, &json!({ "properties": child }));
        }
    }
    props
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}
