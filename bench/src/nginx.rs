//! nginx in two roles, both generated into the run's temp dir and started as children
//! (`nginx -p <dir> -c <conf> -g 'daemon off;'`, so stopping the child stops nginx):
//!
//! - **the fake Azure upstream** (not the code under test): three single-worker instances,
//!   one per "region", answering fixed bodies with `return 200` (so their cost is as close to
//!   zero as an HTTP server gets) and, for the memory test, an SSE stream that stays open
//!   (echo module: first frame, flush, sleep);
//! - **the nginx baseline**: a plain reverse proxy over the three, with as many workers as
//!   the data plane has tokio workers (one per core) and upstream keep-alive — the cost of one
//!   well-known proxy hop, which the gateway is compared to.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

use crate::procs::{self, Managed};

/// The echo module (Debian `libnginx-mod-http-echo`), for the open stream.
pub const ECHO_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_echo_module.so";

/// The fixed non-streamed answer: a real `chat.completion`, 653 bytes.
pub const CHAT_BODY: &str = r#"{"id":"chatcmpl-B9MHDbslfKsOBGhsPmpmFoF5mR3fz","object":"chat.completion","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_b705f0c291","choices":[{"index":0,"finish_reason":"stop","logprobs":null,"message":{"role":"assistant","content":"The gateway forwarded this answer from the fastest region without changing a byte.","refusal":null},"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}],"usage":{"prompt_tokens":19,"completion_tokens":16,"total_tokens":35}}"#;

/// The fixed 3-frame SSE answer (nginx config string: `\n` is unescaped by nginx).
const STREAM_BODY_CONF: &str = r#"data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\ndata: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\ndata: [DONE]\n\n"#;

/// First frame of the open stream.
const SLOW_FIRST_FRAME_CONF: &str = r#"data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n"#;

/// Directives every instance shares: everything it writes stays in `dir`.
fn common_head(dir: &Path, name: &str, workers: u32) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};\n\
         worker_rlimit_nofile 65536;\n\
         error_log {d}/{name}.err warn;\n\
         pid {d}/{name}.pid;\n\
         load_module {ECHO_MODULE};\n\
         events {{ worker_connections 16384; }}\n"
    )
}

fn common_http(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "  access_log off;\n\
         \x20 client_body_temp_path {d}/{name}-tmp/body;\n\
         \x20 proxy_temp_path {d}/{name}-tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/{name}-tmp/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/{name}-tmp/uwsgi;\n\
         \x20 scgi_temp_path {d}/{name}-tmp/scgi;\n\
         \x20 keepalive_requests 10000000;\n\
         \x20 keepalive_timeout 300s;\n"
    )
}

/// The config of one fake region: `/openai/deployments/{chat,stream,slow}/chat/completions`.
/// `slow_secs`: how long the open stream stays open after its first frame.
pub fn upstream_conf(dir: &Path, name: &str, port: u16, slow_secs: u32) -> String {
    format!(
        "{head}http {{\n{http}\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port};\n\
         \x20   location ~ ^/openai/deployments/chat/chat/completions$ {{\n\
         \x20     default_type application/json;\n\
         \x20     return 200 '{CHAT_BODY}';\n\
         \x20   }}\n\
         \x20   location ~ ^/openai/deployments/stream/chat/completions$ {{\n\
         \x20     default_type text/event-stream;\n\
         \x20     return 200 '{STREAM_BODY_CONF}';\n\
         \x20   }}\n\
         \x20   location ~ ^/openai/deployments/slow/chat/completions$ {{\n\
         \x20     default_type text/event-stream;\n\
         \x20     echo_read_request_body;\n\
         \x20     echo '{SLOW_FIRST_FRAME_CONF}';\n\
         \x20     echo_flush;\n\
         \x20     echo_sleep {slow_secs};\n\
         \x20     echo 'data: [DONE]\\n';\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n",
        head = common_head(dir, name, 1),
        http = common_http(dir, name),
    )
}

/// The baseline reverse proxy over the three regions, listening on `port`; deployment `llm`
/// goes to the `llm` section's fake model on `model_port`, unbuffered as an SSE deployment of
/// nginx is configured.
pub fn proxy_conf(
    dir: &Path,
    name: &str,
    port: u16,
    upstreams: &[u16],
    model_port: u16,
    workers: u32,
) -> String {
    let servers: String =
        upstreams.iter().map(|p| format!("    server 127.0.0.1:{p};\n")).collect();
    format!(
        "{head}http {{\n{http}\
         \x20 upstream regions {{\n{servers}\
         \x20   keepalive 256;\n\
         \x20   keepalive_requests 10000000;\n\
         \x20   keepalive_timeout 300s;\n\
         \x20 }}\n\
         \x20 upstream model {{\n\
         \x20   server 127.0.0.1:{model_port};\n\
         \x20   keepalive 256;\n\
         \x20   keepalive_requests 10000000;\n\
         \x20   keepalive_timeout 300s;\n\
         \x20 }}\n\
         \x20 proxy_http_version 1.1;\n\
         \x20 proxy_set_header Connection \"\";\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port};\n\
         \x20   location ~ ^/openai/deployments/chat/chat/completions$ {{\n\
         \x20     proxy_pass http://regions;\n\
         \x20   }}\n\
         \x20   location ~ ^/openai/deployments/(stream|slow)/chat/completions$ {{\n\
         \x20     proxy_pass http://regions;\n\
         \x20     proxy_buffering off;\n\
         \x20   }}\n\
         \x20   location ~ ^/openai/deployments/llm/chat/completions$ {{\n\
         \x20     proxy_pass http://model;\n\
         \x20     proxy_buffering off;\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n",
        head = common_head(dir, name, workers),
        http = common_http(dir, name),
    )
}

/// One running nginx (master; its workers are found through `/proc`).
pub struct Nginx {
    pub port: u16,
    pub proc: Managed,
}

impl Nginx {
    /// Writes `conf` to `<dir>/<name>.conf`, starts nginx in the foreground and waits until it
    /// accepts connections on `port`.
    pub async fn start(dir: &Path, name: &str, port: u16, conf: &str) -> anyhow::Result<Nginx> {
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(format!("{name}-tmp/{sub}")))?;
        }
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("{name}.stderr")))
                    .context("nginx stderr file")?,
            ))
            .kill_on_drop(true)
            .spawn()
            .context("spawning nginx (is it installed? bench/run.sh installs it)")?;
        let mut proc = Managed::new(name, child, true)?;
        let addr = format!("127.0.0.1:{port}");
        let waited = procs::wait_for_port(&addr, Duration::from_secs(10)).await;
        if let Err(e) = proc.ensure_running().and(waited) {
            let err = std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default()
                + &std::fs::read_to_string(dir.join(format!("{name}.stderr"))).unwrap_or_default();
            anyhow::bail!("nginx {name} did not start: {e}\n{err}");
        }
        Ok(Nginx { port, proc })
    }

    /// Starts with a fresh free port each try (another program may take a port between our
    /// probe and nginx's bind). `conf_for` builds the config for a port.
    pub async fn start_on_free_port(
        dir: &Path,
        name: &str,
        conf_for: impl Fn(u16) -> String,
    ) -> anyhow::Result<Nginx> {
        let mut last = None;
        for _ in 0..3 {
            let port = procs::free_port()?;
            match Nginx::start(dir, name, port, &conf_for(port)).await {
                Ok(n) => return Ok(n),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nginx {name} did not start")))
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Master and workers.
    pub fn pids(&self) -> Vec<u32> {
        self.proc.pids()
    }

    pub async fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_body_is_the_653_byte_completion() {
        assert_eq!(CHAT_BODY.len(), 653);
        let v: serde_json::Value = serde_json::from_str(CHAT_BODY).expect("json");
        assert_eq!(v["object"], "chat.completion");
    }

    #[test]
    fn configs_keep_everything_in_the_temp_dir() {
        let dir = Path::new("/tmp/x");
        let up = upstream_conf(dir, "up1", 18101, 30);
        assert!(up.contains("listen 127.0.0.1:18101;"));
        assert!(up.contains("pid /tmp/x/up1.pid;"));
        assert!(up.contains("echo_sleep 30;"));
        assert!(up.contains("worker_processes 1;"));
        let px = proxy_conf(dir, "proxy", 18200, &[1, 2, 3], 4, 2);
        assert!(px.contains("server 127.0.0.1:2;"));
        assert!(px.contains("keepalive 256;"));
        assert!(px.contains("worker_processes 2;"));
        assert!(px.contains("proxy_buffering off;"));
        assert!(px.contains("server 127.0.0.1:4;"));
        assert!(px.contains("proxy_pass http://model;"));
        assert_eq!(px.matches('{').count(), px.matches('}').count());
        assert_eq!(up.matches('{').count(), up.matches('}').count());
    }
}
