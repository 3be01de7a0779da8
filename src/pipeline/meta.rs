//! PGSync's `_meta` field: `{table: {key_column: [sorted distinct values]}}` over every row that
//! contributed to a document. The query returns nested `[table, column, value]` triples; this
//! folds them.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Folds nested triples into PGSync's `_meta` object.
pub fn fold(triples: &Value) -> Value {
    let mut acc: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    walk(triples, &mut acc);
    let mut out = Map::new();
    for (table, cols) in acc {
        let mut m = Map::new();
        for (col, mut vals) in cols {
            vals.sort_by(cmp_values);
            vals.dedup();
            m.insert(col, Value::Array(vals));
        }
        out.insert(table, Value::Object(m));
    }
    Value::Object(out)
}

fn walk(v: &Value, acc: &mut BTreeMap<String, BTreeMap<String, Vec<Value>>>) {
    let Value::Array(items) = v else { return };
    if let [Value::String(table), Value::String(col), value] = items.as_slice() {
        if !value.is_null() {
            acc.entry(table.clone())
                .or_default()
                .entry(col.clone())
                .or_default()
                .push(value.clone());
        }
        return;
    }
    for i in items {
        walk(i, acc);
    }
}

fn cmp_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(std::cmp::Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_triples_fold_into_sorted_distinct_values_per_table() {
        let t = json!([
            ["book", "id", "1"],
            [["author", "id", 3], [["city", "id", 1]]],
            [["author", "id", 1], [["city", "id", 1]]],
            null
        ]);
        assert_eq!(
            fold(&t),
            json!({"author": {"id": [1, 3]}, "book": {"id": ["1"]}, "city": {"id": [1]}})
        );
    }
}
