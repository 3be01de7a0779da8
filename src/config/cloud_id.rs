//! Elastic Cloud deployment ids: PGSync users configure a deployment by its `cloud_id` from the
//! Elastic Cloud console rather than by URL, so the id is decoded to the Elasticsearch endpoint as
//! elasticsearch-py decodes it.

use crate::{Error, Result};
use base64::Engine;

/// The Elasticsearch endpoint of an Elastic Cloud `cloud_id`: `name:base64(host[:port]$es_uuid[:port]$kibana_uuid)`
/// becomes `https://<es_uuid>.<host>[:port]` (port 443 unless the id names another).
pub fn endpoint(cloud_id: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::config(format!(
            "search.cloud_id (ELASTICSEARCH_CLOUD_ID) is not an Elastic Cloud id: {why}; copy it from the deployment's page in the Elastic Cloud console"
        ))
    };
    let (_name, data) = cloud_id
        .trim()
        .split_once(':')
        .ok_or_else(|| bad("it has no `name:` prefix"))?;
    let data = data.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(data))
        .map_err(|_| bad("the part after `:` is not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| bad("the decoded part is not text"))?;
    let mut parts = text.trim().split('$');
    let host = parts.next().unwrap_or("").trim();
    let es_uuid = parts.next().unwrap_or("").trim();
    if host.is_empty() || es_uuid.is_empty() {
        return Err(bad("the decoded part is not `host$es_uuid$kibana_uuid`"));
    }
    let (host, host_port) = split_port(host).map_err(|_| bad("its host has a bad port"))?;
    let (es_uuid, es_port) = split_port(es_uuid).map_err(|_| bad("its uuid has a bad port"))?;
    let port = es_port.or(host_port).unwrap_or(443);
    Ok(if port == 443 {
        format!("https://{es_uuid}.{host}")
    } else {
        format!("https://{es_uuid}.{host}:{port}")
    })
}

/// `name:port` into its name and port, `name` alone into the name.
fn split_port(s: &str) -> std::result::Result<(&str, Option<u16>), ()> {
    match s.rsplit_once(':') {
        Some((name, port)) => Ok((name, Some(port.parse().map_err(|_| ())?))),
        None => Ok((s, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;
    use base64::Engine;

    fn id(name: &str, data: &str) -> String {
        format!(
            "{name}:{}",
            base64::engine::general_purpose::STANDARD.encode(data)
        )
    }

    #[test]
    fn a_cloud_id_decodes_to_the_deployments_elasticsearch_endpoint() {
        let c = id("my-deployment", "us-east-1.aws.found.io$0123abcd$4567ef01");
        assert_eq!(
            endpoint(&c).unwrap(),
            "https://0123abcd.us-east-1.aws.found.io"
        );
        // Without a Kibana uuid, and with the trailing `$`.
        let c = id("d", "eu-west-1.aws.found.io$abc$");
        assert_eq!(endpoint(&c).unwrap(), "https://abc.eu-west-1.aws.found.io");
        let c = id("d", "eu-west-1.aws.found.io$abc");
        assert_eq!(endpoint(&c).unwrap(), "https://abc.eu-west-1.aws.found.io");
    }

    #[test]
    fn a_port_in_the_host_or_the_uuid_is_kept() {
        let c = id("d", "westeurope.azure.elastic-cloud.com:9243$e5$k");
        assert_eq!(
            endpoint(&c).unwrap(),
            "https://e5.westeurope.azure.elastic-cloud.com:9243"
        );
        let c = id("d", "host.example:9243$e5:9244$k");
        assert_eq!(endpoint(&c).unwrap(), "https://e5.host.example:9244");
        let c = id("d", "host.example:443$e5$k");
        assert_eq!(endpoint(&c).unwrap(), "https://e5.host.example");
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let data = base64::engine::general_purpose::STANDARD_NO_PAD.encode("h.example$u1$k");
        assert_eq!(
            endpoint(&format!("x:{data}")).unwrap(),
            "https://u1.h.example"
        );
    }

    #[test]
    fn a_malformed_cloud_id_names_the_key() {
        for bad in [
            "no-colon".to_owned(),
            "x:!!!not base64!!!".to_owned(),
            id("x", "only-a-host"),
            id("x", "$uuid$k"),
            id("x", "host:port$uuid"),
        ] {
            let e = endpoint(&bad).unwrap_err();
            assert!(e.message.contains("search.cloud_id"), "{bad}: {e}");
            assert!(e.message.contains("ELASTICSEARCH_CLOUD_ID"), "{bad}: {e}");
        }
    }
}
