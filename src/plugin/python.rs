//! The embedded interpreter: starts CPython once per process, loads the plugin host
//! (`host.py`, compiled into the binary), and converts batches to and from Python objects.

use super::PluginOutcome;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use std::ffi::CString;
use std::path::Path;

const HOST_SOURCE: &str = include_str!("host.py");

static HOST: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Loading swaps the process-wide `plugins` entries of `sys.modules`: one load at a time. Taken
/// before the interpreter lock, and never by the threads applying plugins, so it cannot deadlock.
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn host(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    HOST.get_or_try_init(py, || {
        // Plugins are read from the operator's directory; leave no __pycache__ in it.
        py.import("sys")?.setattr("dont_write_bytecode", true)?;
        let code = CString::new(HOST_SOURCE).expect("host.py has no NUL byte");
        let m = PyModule::from_code(py, &code, c"<pgsync-rs plugin host>", c"pgsync_rs_plugins")?;
        Ok(m.unbind())
    })
    .map(|m| m.bind(py))
}

/// Imports the package (`dir`, or `plugins` from `sys.path`) and builds the chain `names`.
/// The error is a message with the file and the traceback.
pub(super) fn load(dir: Option<&Path>, names: &[String]) -> Result<Py<PyAny>, String> {
    let dir = dir
        .map(|d| {
            d.to_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("plugin directory {} is not valid UTF-8", d.display()))
        })
        .transpose()?;
    let _one_at_a_time = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    Python::initialize();
    Python::attach(|py| {
        let r = host(py).and_then(|h| h.call_method1("load", (dir.as_deref(), names.to_vec())));
        r.map(Bound::unbind).map_err(|e| describe(py, &e))
    })
}

/// The values an `Auth` plugin gives for `keys`, and per failed key the exception's type name.
pub(super) type AuthAnswer = (
    std::collections::HashMap<String, String>,
    std::collections::HashMap<String, String>,
);

/// PGSync's `auth(key)` hook for each of `keys`.
pub(super) fn auth(dir: Option<&Path>, keys: &[&str]) -> Result<AuthAnswer, String> {
    let dir = dir.and_then(Path::to_str).map(str::to_owned);
    let _one_at_a_time = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    Python::initialize();
    Python::attach(|py| {
        let r = host(py).and_then(|h| h.call_method1("auth", (dir.as_deref(), keys.to_vec())));
        r.and_then(|v| v.extract::<AuthAnswer>())
            .map_err(|e| describe(py, &e))
    })
}

/// Runs `chain` over one batch with the interpreter lock held throughout.
pub(super) fn apply(
    chain: &Py<PyAny>,
    index: &str,
    docs: &[(String, Vec<u8>)],
) -> Vec<PluginOutcome> {
    Python::attach(|py| {
        apply_batch(py, chain, index, docs).unwrap_or_else(|e| {
            let why = describe(py, &e);
            docs.iter()
                .map(|_| PluginOutcome::Failed {
                    traceback: why.clone(),
                })
                .collect()
        })
    })
}

fn apply_batch(
    py: Python<'_>,
    chain: &Py<PyAny>,
    index: &str,
    docs: &[(String, Vec<u8>)],
) -> PyResult<Vec<PluginOutcome>> {
    let items = PyList::empty(py);
    for (id, source) in docs {
        items.append(PyTuple::new(
            py,
            [
                PyString::new(py, id).into_any(),
                PyBytes::new(py, source).into_any(),
            ],
        )?)?;
    }
    let answers = chain.bind(py).call_method1("apply", (index, items))?;
    let mut out = Vec::with_capacity(docs.len());
    for answer in answers.try_iter()? {
        let answer = answer?;
        out.push(if answer.is_none() {
            PluginOutcome::Drop
        } else if let Ok(json) = answer.cast::<PyString>() {
            PluginOutcome::Keep(json.to_str()?.as_bytes().to_vec())
        } else {
            let (traceback,): (String,) = answer.extract()?;
            PluginOutcome::Failed { traceback }
        });
    }
    if out.len() != docs.len() {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "the plugin host answered {} documents for {}",
            out.len(),
            docs.len()
        )));
    }
    Ok(out)
}

/// The text of a Python error: the host's own `LoadError` is already a full message; anything
/// else gets its traceback.
fn describe(py: Python<'_>, e: &PyErr) -> String {
    let is_load_error = host(py)
        .and_then(|h| h.getattr("LoadError"))
        .is_ok_and(|t| e.get_type(py).is(&t));
    if is_load_error {
        return e.value(py).to_string();
    }
    let formatted = py
        .import("traceback")
        .and_then(|t| {
            let tb = e.traceback(py).map(Bound::into_any);
            t.call_method1("format_exception", (e.get_type(py), e.value(py), tb))
        })
        .and_then(|lines| lines.extract::<Vec<String>>());
    match formatted {
        Ok(lines) => lines.concat(),
        Err(_) => e.to_string(),
    }
}
