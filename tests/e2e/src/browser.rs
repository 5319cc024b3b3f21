//! A real headless Chromium for the console's browser tests, driven over WebDriver
//! (chromedriver) with `fantoccini`. Each [`Browser`] is its own chromedriver process on a free
//! port and its own browser session, in a 1280×900 window.
//!
//! Waits poll a condition with a deadline ([`Browser::wait_for`]); nothing sleeps for a fixed
//! time. Screenshots go to `<target dir>/console-screenshots/` ([`screenshot_dir`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
pub use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The window every test uses (the screenshots' size).
pub const WINDOW: (u32, u32) = (1280, 900);
/// How long a page condition may take by default (a cold debug build on 2 cores).
pub const WAIT: Duration = Duration::from_secs(10);
/// How often a waited-for condition is checked.
const POLL: Duration = Duration::from_millis(50);

/// Where the browser and its driver are: `MODELGW_CHROMEDRIVER` / `MODELGW_CHROMIUM`, else
/// Debian's `chromium-driver` and `chromium`.
fn driver_path() -> PathBuf {
    std::env::var_os("MODELGW_CHROMEDRIVER")
        .map_or_else(|| "/usr/bin/chromedriver".into(), Into::into)
}

fn chromium_path() -> PathBuf {
    std::env::var_os("MODELGW_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), Into::into)
}

/// A free port on 127.0.0.1 (bound and released: a process started right after takes it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `<target dir>/console-screenshots`, next to the `modelgw` binary the tests run.
pub fn screenshot_dir(bin: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        // <target>/debug/modelgw
        bin.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
    });
    target.join("console-screenshots")
}

/// One chromedriver and one browser session on it.
pub struct Browser {
    pub client: Client,
    /// The console's base URL (`http://127.0.0.1:PORT`).
    pub base: String,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session on `base`.
    pub async fn start(base: &str) -> anyhow::Result<Browser> {
        crate::init();
        let port = free_port()?;
        let mut driver = Command::new(driver_path())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: dropping the browser ends chromedriver and every Chromium
            // process it started, even when a test fails before `close`.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (Debian: apt-get install chromium chromium-driver)",
                    driver_path().display()
                )
            })?;
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = reqwest::get(format!("{url}/status")).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Ok(Some(status)) = driver.try_wait() {
                bail!("chromedriver exited at start: {status}");
            }
            if started.elapsed() > WAIT {
                bail!("chromedriver not ready on port {port} within {WAIT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let (w, h) = WINDOW;
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_path(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-extensions", "--no-first-run", "--hide-scrollbars",
                    format!("--window-size={w},{h}"),
                ],
            },
        });
        let caps = match caps {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .context("opening a Chromium session")?;
        client.set_window_size(w, h).await.context("window size")?;
        Ok(Browser { client, base: base.trim_end_matches('/').to_owned(), driver })
    }

    /// Opens `path` of the console.
    pub async fn goto(&self, path: &str) -> anyhow::Result<()> {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .with_context(|| format!("GET {path}"))
    }

    /// Signs in with `token` on the sign-in page.
    pub async fn sign_in(&self, token: &str) -> anyhow::Result<()> {
        self.goto("/sign-in").await?;
        self.fill("#token", token).await?;
        self.click("#sign-in").await?;
        self.wait_for(
            "the overview after sign-in",
            "return location.pathname === '/' && !!document.querySelector('nav.sidebar')",
        )
        .await
    }

    /// Runs `script` (a function body) and returns its value.
    pub async fn js(&self, script: &str) -> anyhow::Result<Value> {
        self.client.execute(script, vec![]).await.with_context(|| format!("script: {script}"))
    }

    /// Runs `script` with arguments.
    pub async fn js_with(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.client.execute(script, args).await.with_context(|| format!("script: {script}"))
    }

    /// Waits until `condition` (a function body returning a boolean) holds, up to [`WAIT`].
    pub async fn wait_for(&self, what: &str, condition: &str) -> anyhow::Result<()> {
        self.wait_within(what, condition, WAIT).await
    }

    /// Waits until `condition` holds, up to `within`; returns how long it took.
    pub async fn wait_within(
        &self,
        what: &str,
        condition: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.js(condition).await? == Value::Bool(true) {
                return Ok(());
            }
            if started.elapsed() > within {
                let path = self.js("return location.pathname + location.search").await?;
                let body = self.js("return document.body ? document.body.innerText : ''").await?;
                bail!(
                    "waited {within:?} for {what} on {path}; the page says:\n{}",
                    body.as_str().unwrap_or("").chars().take(3000).collect::<String>()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for an element matching `css` to exist.
    pub async fn wait_css(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        let check = format!("return !!document.querySelector({});", json!(css));
        self.wait_for(css, &check).await?;
        self.find(css).await
    }

    pub async fn find(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.client.find(Locator::Css(css)).await.with_context(|| format!("no {css}"))
    }

    pub async fn exists(&self, css: &str) -> anyhow::Result<bool> {
        let check = format!("return !!document.querySelector({});", json!(css));
        Ok(self.js(&check).await? == Value::Bool(true))
    }

    /// The text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let script = format!(
            "var e = document.querySelector({}); return e ? e.textContent : '';",
            json!(css)
        );
        Ok(self.js(&script).await?.as_str().unwrap_or("").to_owned())
    }

    /// Replaces the value of the input matching `css` by typing `value`.
    pub async fn fill(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let input = self.wait_css(css).await?;
        input.clear().await.with_context(|| format!("clearing {css}"))?;
        input.send_keys(value).await.with_context(|| format!("typing into {css}"))
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let e = self.wait_css(css).await?;
        e.click().await.with_context(|| format!("clicking {css}"))
    }

    /// Chooses the option of the `select` matching `css` whose value is `value`.
    pub async fn select(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let e = self.wait_css(css).await?;
        e.select_by_value(value).await.with_context(|| format!("choosing {value} in {css}"))
    }

    /// The path (and query) the browser shows.
    pub async fn path(&self) -> anyhow::Result<String> {
        Ok(self
            .js("return location.pathname + location.search")
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Saves a PNG of the window as `<dir>/<name>.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let png = self.client.screenshot().await.context("screenshot")?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Ends the session (Chromium exits), then the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            // The whole group only when it is chromedriver's own (it leads it): never anyone
            // else's.
            let target =
                if process_group(pid) == Some(pid) { format!("-{pid}") } else { pid.to_string() };
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .arg(target)
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.start_kill();
    }
}

/// The process group of `pid`, from `/proc/<pid>/stat` (the field after state and parent).
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}
