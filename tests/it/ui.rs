//! The operators' web page (`/ui/`) in a real browser: headless Chromium driven through WebDriver
//! (Debian's `chromium` and `chromium-driver`, which test.sh installs), against `ipam demo --keep`
//! with an API token, so the page shows the demo's networks, hosts and reservations. WebDriver is
//! plain JSON over HTTP, spoken here with the standard library and serde_json, so no browser crate
//! (and its build) is needed.
//!
//! Screenshots go to `target/ui-screenshots/` for a person to look at; the README shows one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::recovery::ipam_binary;

const TOKEN: &str = "ui-test-token";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long any one condition in the page may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request with `Connection: close`: the status and the body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    // chromedriver keeps the connection open whatever the request says: read by Content-Length.
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    match length {
        Some(length) => {
            body.resize(length, 0);
            reader.read_exact(&mut body).unwrap();
        }
        None => {
            reader.read_to_end(&mut body).unwrap();
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `ipam --api-token TOKEN demo --keep`: the demo's story, then its stack left running. Dropping it
/// sends SIGTERM, on which the demo stops its `ipam up` and removes its directory.
struct KeptDemo {
    child: Child,
    api: SocketAddr,
}

impl KeptDemo {
    fn start() -> KeptDemo {
        let mut child = Command::new(ipam_binary())
            .args(["--api-token", TOKEN, "demo", "--keep"])
            .env("IPAM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("demo: {line}");
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut demo = KeptDemo { child, api: SocketAddr::from(([127, 0, 0, 1], 0)) };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line =
                receiver.recv_timeout(left).unwrap_or_else(|_| panic!("`ipam demo --keep` never said it stays up"));
            if let Some(rest) = line.split("open http://").nth(1) {
                let addr = rest.split('/').next().unwrap();
                demo.api = addr.parse().unwrap_or_else(|_| panic!("no address in `{line}`"));
                return demo;
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.api)
    }
}

impl Drop for KeptDemo {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chromedriver on a free local port with one headless Chromium session.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// Why the browser could not start, when the machine lacks it.
fn missing(what: &str) -> String {
    format!(
        "{what}: the browser test needs Debian's `chromium` and `chromium-driver` packages \
         (`apt-get install chromium chromium-driver`; ./test.sh installs them)"
    )
}

impl Browser {
    /// Starts the browser, or answers why it cannot start on this machine.
    fn start() -> Result<Browser, String> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .ok_or_else(|| missing("no chromium binary"))?;
        let driver_binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .ok_or_else(|| missing("no chromedriver binary"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let driver = Command::new(&driver_binary)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| missing(&format!("{} did not start ({e})", driver_binary.display())))?;
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser { driver, addr, session: String::new(), _profile: profile };
        let deadline = Instant::now() + WAIT;
        loop {
            if TcpStream::connect(addr).is_ok()
                && request(addr, "GET", "/status", &[], None).1.contains("\"ready\":true")
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(missing("chromedriver never answered /status"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--window-size=1280,1000",
                         format!("--user-data-dir={}", browser._profile.path().display())],
            },
        }}});
        let (status, body) = request(addr, "POST", "/session", &[], Some(&capabilities));
        if status != 200 {
            return Err(missing(&format!("chromium did not start through chromedriver ({status}: {body})")));
        }
        let answer: Value = serde_json::from_str(&body).unwrap();
        browser.session = answer["value"]["sessionId"].as_str().unwrap().to_owned();
        Ok(browser)
    }

    /// One WebDriver command of this session; its `value`.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = body.or_else(|| (method == "POST").then(|| json!({})));
        let (status, text) = request(self.addr, method, &path, &[], body.as_ref());
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {status} {text}"));
        assert_eq!(status, 200, "{method} {path}: {text}");
        answer["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    fn run(&self, script: &str, args: Value) -> Value {
        self.command("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Waits until `script` returns something truthy in the page; that value.
    fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.run(script, json!([]));
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            let page = self.run("return document.body ? document.body.innerText : ''", json!([]));
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; the page says:\n{}",
                page.as_str().unwrap_or("")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn find(&self, css: &str) -> String {
        let element = self.command("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        element[ELEMENT].as_str().unwrap().to_owned()
    }

    fn find_link(&self, text: &str) -> String {
        let element = self.command("POST", "/element", Some(json!({"using": "link text", "value": text})));
        element[ELEMENT].as_str().unwrap().to_owned()
    }

    fn click(&self, element: &str) {
        self.command("POST", &format!("/element/{element}/click"), None);
    }

    fn clear_and_type(&self, element: &str, text: &str) {
        self.command("POST", &format!("/element/{element}/clear"), None);
        self.command("POST", &format!("/element/{element}/value"), Some(json!({ "text": text })));
    }

    /// The browser console's errors since the last call: script errors, not the failed requests
    /// Chromium also logs (the refused token's 401s, the probe of `?at=` on an address nobody
    /// held, which answers 404), which the page expects and handles.
    fn console_errors(&self) -> Vec<String> {
        let entries = self.command("POST", "/se/log", Some(json!({"type": "browser"})));
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter_map(|entry| entry["message"].as_str())
            .filter(|message| !message.contains("Failed to load resource"))
            .map(str::to_owned)
            .collect()
    }

    /// Presses Tab once, as a keyboard user would.
    fn press_tab(&self) {
        let tab = "\u{E004}";
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": tab}, {"type": "keyUp", "value": tab}]}]});
        self.command("POST", "/actions", Some(actions));
    }

    fn set_window(&self, width: u32, height: u32) {
        self.command("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    fn screenshot(&self, name: &str) {
        self.run("window.scrollTo(0, 0)", json!([]));
        let encoded = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(self.addr, "DELETE", &format!("/session/{}", self.session), &[], None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `target/ui-screenshots`, beside the profile directories of the build.
fn screenshot_dir() -> PathBuf {
    let binary = ipam_binary();
    let target = binary.parent().and_then(Path::parent).unwrap();
    target.join("ui-screenshots")
}

/// Every form control on the page has a label, the page has its landmarks, and nothing is wider
/// than the window (tables scroll inside their own box).
const ACCESSIBLE: &str = "
    const unlabelled = [...document.querySelectorAll('input, select, textarea')]
        .filter((c) => c.type !== 'hidden' && !c.labels.length && !c.getAttribute('aria-label'));
    const landmarks = ['header', 'nav', 'main', 'footer'].every((tag) => document.querySelector(tag));
    const overflow = document.documentElement.scrollWidth - window.innerWidth;
    return JSON.stringify({unlabelled: unlabelled.map((c) => c.id || c.name), landmarks, overflow});";

fn check_accessible(browser: &Browser, page: &str) {
    let report: Value = serde_json::from_str(browser.run(ACCESSIBLE, json!([])).as_str().unwrap()).unwrap();
    assert_eq!(report["unlabelled"], json!([]), "{page}: form controls without a label");
    assert_eq!(report["landmarks"], json!(true), "{page}: a landmark is missing");
    assert!(report["overflow"].as_i64().unwrap() <= 0, "{page} is wider than the window: {report}");
}

#[test]
fn operators_page_shows_the_demo_in_a_browser_and_asks_for_the_token() {
    let browser = match Browser::start() {
        Ok(browser) => browser,
        Err(why) => {
            println!("SKIPPED: the web page was not tested in a browser: {why}");
            return;
        }
    };
    let demo = KeptDemo::start();
    let page = format!("{}/ui/", demo.url());

    // No token yet: the sign-in prompt, and no data.
    browser.open(&page);
    browser.wait_for("the sign-in prompt shows", "return !document.getElementById('sign-in').hidden");
    // From the keyboard: the prompt has the focus, and Tab goes on to its button.
    let focused = || browser.run("return document.activeElement.id || document.activeElement.textContent", json!([]));
    assert_eq!(focused(), json!("token"), "the sign-in prompt takes the focus");
    browser.press_tab();
    assert_eq!(focused(), json!("Sign in"), "Tab reaches the sign-in button");
    // A wrong token: refused, the prompt stays, still no data.
    let token = browser.find("#token");
    browser.clear_and_type(&token, "not-the-token");
    browser.click(&browser.find("#sign-in-form button[type=submit]"));
    browser.wait_for("the wrong token is refused", "return document.getElementById('sign-in-error').textContent");
    let shown = browser.run(
        "return JSON.stringify({prompt: !document.getElementById('sign-in').hidden, \
         page: document.getElementById('page').innerText, \
         stored: sessionStorage.getItem('ipam.token')})",
        json!([]),
    );
    let shown: Value = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    assert_eq!(shown["prompt"], json!(true), "a wrong token must leave the sign-in prompt: {shown}");
    assert_eq!(shown["page"], json!(""), "a wrong token must show no data: {shown}");
    assert_eq!(shown["stored"], Value::Null, "a refused token must not be kept: {shown}");
    browser.screenshot("sign-in-refused");

    // The right token: the overview, with the demo's networks, servers, hosts and its rejection.
    browser.clear_and_type(&token, TOKEN);
    browser.click(&browser.find("#sign-in-form button[type=submit]"));
    browser.wait_for(
        "the overview shows the demo's networks",
        "const h = document.querySelector('#page h1'); \
         return h && h.textContent === 'Overview' && document.body.innerText.includes('production')",
    );
    let overview = browser.run("return document.getElementById('page').innerText", json!([]));
    let overview = overview.as_str().unwrap();
    for expected in ["lab", "10.10.0.0/23", "10.10.2.0/24", "10.20.0.0/24", "host-2", "host-3", "ip_outside_subnet"] {
        assert!(overview.contains(expected), "the overview does not show `{expected}`:\n{overview}");
    }
    let meters = browser.run("return document.querySelectorAll('#page [role=meter]').length", json!([]));
    assert_eq!(meters, json!(3), "one utilization bar per subnet");
    check_accessible(&browser, "the overview");
    browser.screenshot("overview");

    // Follow a network; search its reservations by MAC. The demo's vNIC 1 is on production.
    browser.click(&browser.find_link("production"));
    browser.wait_for(
        "the network page shows production's reservations",
        "const h = document.querySelector('#page h1'); \
         return h && h.textContent === 'Network production' && document.querySelectorAll('#reservations tbody tr').length",
    );
    assert_eq!(
        browser.run("return document.querySelectorAll('#reservations tbody tr').length", json!([])),
        json!(50),
        "reservations come in pages of 50"
    );
    let search = browser.find("#reservation-search");
    browser.clear_and_type(&search, "52:54:00:00:00:01");
    let rows = browser.wait_for(
        "the search finds the one reservation of that MAC",
        "const rows = [...document.querySelectorAll('#reservations tbody tr')]; \
         return rows.length === 1 && rows[0].innerText",
    );
    let row = rows.as_str().unwrap();
    assert!(row.contains("52:54:00:00:00:01") && row.contains("10.10."), "{row}");
    // The vNIC's state: the demo runs no host agent, so no server has reported serving it.
    assert!(row.contains("reserved"), "the row names the vNIC's state: {row}");
    // A host serving production fell silent during the demo: its server was removed and replaced.
    let history = browser.wait_for(
        "the placement history shows a server removed for a lost heartbeat and its replacement",
        "const t = document.getElementById('server-history'); \
         return t && t.innerText.includes('heartbeat_lost') && t.innerText.includes('replacement') && t.innerText",
    );
    // At least those four; more when a restart of the demo's stack made placement move servers
    // of hosts that fell silent meanwhile.
    let changes = history.as_str().unwrap().lines().filter(|line| line.contains("host-")).count();
    assert!(changes >= 4, "two placements, one removal, one replacement: {history}");
    let ordered = browser.run(
        "const keys = [...document.querySelectorAll('#server-history tbody tr')].map((tr) => tr.dataset.key); \
         return keys.every((key, i) => i === 0 || keys[i - 1] <= key)",
        json!([]),
    );
    assert_eq!(ordered, json!(true), "the placement history is in time order: {history}");
    check_accessible(&browser, "the network page");
    browser.screenshot("network");

    // The live page shows a reservation decided after it opened.
    browser.click(&browser.find("nav a[data-page=live]"));
    browser.wait_for("the live page is connected", "return document.getElementById('live-state').dataset.connected");
    let started = json!([{
        "specversion": "1.0", "id": "00000000-0000-0000-0000-0000000e0001", "source": "ui-test",
        "type": "ipam.vnic.started.v1", "time": "2026-12-02T00:00:00Z",
        "data": {"vnic_id": "00000000-0000-0000-0000-0000000e0002", "vm_id": "00000000-0000-0000-0000-0000000e0003",
                 "network_id": "00000000-0000-0000-0000-00000000de02", "mac": "52:54:00:0e:00:02",
                 "subnet_id": "00000000-0000-0000-0000-000000005b03"},
    }]);
    let authorization = format!("Bearer {TOKEN}");
    let (status, body) = request(demo.api, "POST", "/v1/events", &[("Authorization", &authorization)], Some(&started));
    assert_eq!(status, 202, "{body}");
    let entry = browser.wait_for(
        "the new reservation appears on the live page",
        "const li = [...document.querySelectorAll('#live-log li')] \
            .find((li) => li.dataset.type === 'ipam.reservation.added.v1' && li.innerText.includes('52:54:00:0e:00:02')); \
         return li && li.innerText",
    );
    assert!(entry.as_str().unwrap().contains("10.20.0."), "the live entry names the address: {entry}");
    check_accessible(&browser, "the live page");
    browser.screenshot("live");

    // That address's history, whole and as of now (the API offers `?at=`), and a host's page.
    let ip = entry.as_str().unwrap().split_whitespace().find(|word| word.starts_with("10.20.0.")).unwrap().to_owned();
    browser.open(&format!("{page}#/lookup/{ip}"));
    browser.wait_for(
        "the IP's history names the new vNIC's MAC",
        "const r = document.getElementById('lookup-result'); \
         return r && r.innerText.includes('52:54:00:0e:00:02') && r.innerText.includes('still held')",
    );
    assert_eq!(browser.run("return !!document.getElementById('lookup-at')", json!([])), json!(true), "no as-of picker");
    let now = browser.run("return encodeURIComponent(new Date().toISOString())", json!([]));
    browser.open(&format!("{page}#/lookup/{ip}?at={}", now.as_str().unwrap()));
    browser.wait_for(
        "the IP as of now names the new vNIC's MAC",
        "const r = document.getElementById('lookup-result'); \
         return r && r.innerText.includes(' as of ') && r.innerText.includes('52:54:00:0e:00:02')",
    );
    check_accessible(&browser, "the lookup page");
    browser.screenshot("lookup");
    browser.open(&format!("{page}#/overview"));
    browser.wait_for(
        "the overview links host-3",
        "return document.querySelector('#page h1').textContent === 'Overview' \
         && [...document.querySelectorAll('#page a')].some((a) => a.textContent === 'host-3')",
    );
    browser.click(&browser.find_link("host-3"));
    browser.wait_for(
        "host-3's page shows its networks and its server",
        "const h = document.querySelector('#page h1'); \
         return h && h.textContent === 'Host host-3' && document.getElementById('page').innerText.includes('br-lab')",
    );
    let host = browser.run("return document.getElementById('page').innerText", json!([]));
    assert!(host.as_str().unwrap().contains("production"), "host-3 is attached to production too: {host}");
    check_accessible(&browser, "the host page");
    browser.screenshot("host");

    // Lookup of that MAC, at a phone's width.
    browser.set_window(390, 844);
    browser.open(&format!("{page}#/lookup/52:54:00:0e:00:02"));
    browser.wait_for(
        "the lookup finds the new vNIC's reservation",
        "const r = document.getElementById('lookup-result'); return r && r.innerText.includes('10.20.0.')",
    );
    check_accessible(&browser, "the lookup page at a phone's width");
    browser.screenshot("lookup-phone");
    browser.open(&format!("{page}#/overview"));
    browser.wait_for("the overview shows at a phone's width", "return document.body.innerText.includes('production')");
    check_accessible(&browser, "the overview at a phone's width");
    browser.screenshot("overview-phone");
    assert_eq!(browser.console_errors(), Vec::<String>::new(), "the page logged errors");
}
