//! The index body (`settings` + `mappings`) created for an index: PGSync's `setting`, a complete
//! `mappings` when given, otherwise node `transform.mapping` entries placed at each node's path
//! plus the document-level `mapping` merged at the root (a `mapping` holding `dynamic_templates`
//! is a whole mapping body, passed through as PGSync passes it).

use super::resolve::{IndexPlan, PlanNode};
use serde_json::{json, Map, Value};

/// The body of the create-index request.
pub fn index_body(plan: &IndexPlan) -> Value {
    let spec = &plan.spec;
    let mut body = Map::new();
    if let Some(s) = &spec.setting {
        body.insert("settings".into(), json!({ "index": s }));
    }
    let mappings = match (&spec.mappings, &spec.mapping) {
        (Some(m), _) => Some(m.clone()),
        // A whole mapping body (`dynamic_templates`, maybe `properties`): PGSync sends it as the
        // index's `mappings` unchanged, so do we.
        (None, Some(m)) if m.contains_key("dynamic_templates") => Some(Value::Object(m.clone())),
        (None, _) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::parse::parse_str;
    use crate::schema::resolve::{resolve, Catalog, ColumnInfo, TableInfo};
    use crate::schema::TableId;

    #[test]
    fn a_mapping_with_dynamic_templates_is_passed_through_as_the_mappings() {
        let text = r#"[{"database": "db", "index": "i", "nodes": {"table": "a", "columns": ["id"]},
            "mapping": {"dynamic_templates": [{"strings": {"match_mapping_type": "string",
                "mapping": {"type": "keyword"}}}], "properties": {"id": {"type": "long"}}}}]"#;
        let file = parse_str(text, std::path::Path::new("schema.json")).unwrap();
        let mut catalog = Catalog::default();
        catalog.schemas.insert("public".into());
        catalog.tables.insert(
            TableId::new("public", "a"),
            TableInfo {
                kind: 'r',
                columns: vec![ColumnInfo {
                    name: "id".into(),
                    type_name: "int4".into(),
                    category: 'N',
                }],
                primary_key: vec!["id".into()],
                foreign_keys: vec![],
            },
        );
        let plans = resolve(&file, &catalog).unwrap();
        let body = index_body(&plans[0]);
        assert_eq!(
            body["mappings"],
            json!({"dynamic_templates": [{"strings": {"match_mapping_type": "string",
                "mapping": {"type": "keyword"}}}], "properties": {"id": {"type": "long"}}})
        );
    }
}
