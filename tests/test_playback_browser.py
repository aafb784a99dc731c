"""svlm.playback where it is used: in a browser. Headless Chromium (Debian's `chromium`, driven by Playwright as in
tests/test_docs.py) opens

(a) the static view a saved notebook shows without its kernel: nbconvert's HTML of a notebook holding what displaying
    `player.widget` outputs, and a page laid out as JupyterLab lays out a reopened notebook;
(b) `video_html` pages served by a 127.0.0.1 HTTP server rooted at one folder, the media in another;
(c) JupyterLab itself with a kernel: the widget's labelled controls, the time on its slider, a caption that never
    moves the controls, `video_html` from a temporary folder; then the notebook saved and reopened with its kernel gone.

Under CI (`$CI` set) a missing browser is a failure; elsewhere the browser tests are skipped, saying so.
`$SVLM_DOCS_OUT` keeps the pages and screenshots in that folder. The live player (`LivePlayer`) and the media
rules are checked here without a browser as well."""
import base64, contextlib, functools, http.server, io, json, os, re, socket, subprocess, sys, threading, time, urllib.request, warnings
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"tools"))
import docs_check as dc
from svlm.events import Event, write_vtt
from svlm.video import write_test_clip, IteratorSource, FileSource
from svlm.playback import StreamPlayer, LivePlayer, MediaWarning, media_url, video_html, MEDIA_DIR, _Tap, _static_bundle

_need_browser = lambda: dc.need_browser("the playback checks")
_out = lambda tmp_path, name: dc.out_dir(tmp_path, "playback")/name

@pytest.fixture(scope="module")
def media(tmp_path_factory):
    "A 4 s clip with its commentary and a reference, in a folder of their own (as the demo's temporary folders)"
    d = tmp_path_factory.mktemp("media")
    clip = write_test_clip(d/"clip.mp4", duration=4.0, fps=10)
    events = [Event(0.5, 1.5, "first words"), Event(2.5, 3.5, "and more")]
    reference = [Event(0.5, 2.0, "ref one")]
    return dict(dir=d, clip=clip, vtt=write_vtt(d/"clip.vtt", events), events=events, reference=reference)

@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=dc.chromium_path(), args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()

def _offline(page):
    "Only this machine: file:, data: and 127.0.0.1 (nbconvert's CDN scripts are unreachable in CI)"
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:", "blob:", "http://127.0.0.1")) else r.abort())

_BAD_TEXT = ("model not found", "Error displaying widget", "Traceback", "Loading widget")

def _visible_text(page) -> str: return page.evaluate("document.body.innerText")

def _displayed(obj) -> list:
    "The outputs IPython's display of `obj` produces, as notebook outputs"
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from IPython.display import display
    InteractiveShell.instance()
    with capture_output() as cap: display(obj)
    return [{"output_type": "display_data", "data": o.data, "metadata": o.metadata or {}} for o in cap.outputs]

# ---------------------------------------------------------------- without a browser

def test_widget_controls_are_labelled(media):
    p = StreamPlayer(media["clip"], media["events"], fps=2, size=(90, 160), reference=media["reference"])
    w = p.widget
    assert (w.playing.description, w.loop.description, w.slider.description) == ("play", "loop", "time")
    assert all(x.tooltip for x in (w.playing, w.loop, w.slider))
    assert w.slider.readout and w.slider.label == "0.0 s" and w.slider.options[3] == ("1.5 s", 3)
    w.slider.index = 2
    assert w.slider.label == "1.0 s" and "reference: ref one" in w.caption.value
    assert w.caption.layout.height == "48px" and w.caption.layout.overflow == "hidden"      # two lines, whatever they hold
    assert p.view(0)[1].count("<div") == p.view(2)[1].count("<div") == 2                      # the reference line stays, blank
    assert StreamPlayer(media["clip"], media["events"], fps=2, size=(90, 160)).widget.caption.layout.height == "24px"

def test_widget_display_carries_the_static_view(media):
    "Displayed, the widget is two outputs: the static view (pure HTML) and the widget; the static view names the reference"
    p = StreamPlayer(media["clip"], media["events"], fps=2, size=(90, 160), reference=media["reference"])
    outs = _displayed(p.widget)
    assert len(outs) == 2
    static, widget = (o["data"] for o in outs)
    assert set(static) == {"text/html", "text/plain"} and 'class="svlm-static"' in static["text/html"]
    assert static["text/html"].count("<figure") == 2 and "reference: ref one" in static["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in widget and "needs its kernel" in widget["text/plain"]
    assert "svlm-live" in p.widget._dom_classes

def test_media_urls(media, tmp_path):
    site = tmp_path/"site"; site.mkdir()
    assert media_url(media["clip"], media["dir"]) == "clip.mp4"                              # under root: its relative path
    assert media_url(media["clip"], site).startswith("data:video/mp4;base64,")                # elsewhere and small: embedded
    url = media_url(media["clip"], site, embed_max_bytes=0)                                  # elsewhere and large: linked
    assert url.startswith(f"{MEDIA_DIR}/clip-") and (site/url).read_bytes() == media["clip"].read_bytes()
    assert not (site/url).is_symlink()                                                      # Jupyter refuses links out of its root
    assert media_url(media["clip"], site, embed_max_bytes=0) == url                          # once
    with pytest.warns(MediaWarning, match=r"clip\.mp4.*outside.*EMBED_MAX_BYTES"):
        media_url(media["clip"], site, embed_max_bytes=0, link=False)
    with pytest.warns(MediaWarning, match=r"nothing\.mp4 does not exist"):
        video_html(media["dir"]/"nothing.mp4", root=site)
    ro = tmp_path/"ro"; ro.mkdir(); (ro/MEDIA_DIR).write_text("a file where the folder should be")
    with pytest.warns(MediaWarning, match=r"clip\.mp4.*cannot be linked or copied"):
        media_url(media["clip"], ro, embed_max_bytes=0)

def _tiny_engine():
    import mlx.core as mx
    from svlm.core import Config, StreamConfig, SamplingConfig
    from svlm.model import Model, preset
    from svlm.tokenizer import ByteTokenizer
    from svlm.stream import StreamEngine
    tok = ByteTokenizer()
    mx.random.seed(0)
    model = Model(preset("tiny", vocab_size=tok.vocab_size, video_pad_id=tok.token_id("<|video_pad|>")))
    return StreamEngine(model, tok, Config(stream=StreamConfig(policy="always"), sampling=SamplingConfig(temperature=1.0, max_new_tokens=4)))

def test_live_player_follows_a_running_stream(media):
    "Frames and events reach the live widget while the engine runs, not after; memory stays at max_frames"
    eng = _tiny_engine()
    watch = LivePlayer(max_frames=5, min_update_s=0.0)
    w = watch.widget
    outs = _displayed(w)
    assert len(outs) == 2 and 'class="svlm-static"' in outs[0]["data"]["text/html"] and len(watch._handles) == 1
    shown, during = [], []
    w.image.observe(lambda ch: shown.append(ch["new"]), names="value")
    def on_event(e):   # called by the engine as it emits e: the widget already shows it, with the frames of its chunk
        during.append((e.text in w.latest.value or len(e.text) == 0, w.slider.max >= e.end - 0.5 - 1e-6, len(shown)))
    res = watch.follow(eng, eng.source(video=media["clip"]), on_event=on_event)
    assert res is not None and len(res.events) >= 3 and len(during) == len(res.events)
    assert all(a and b for a, b, _ in during), during
    assert [n for *_, n in during] == sorted(n for *_, n in during) and during[0][2] >= 1       # frames shown before the first event
    assert (watch.seen, len(watch), len(shown) >= 8) == (8, 5, True)                             # 4 s at 2 fps; the last 5 kept
    assert w.slider.min == 1.5 and w.slider.max == 3.5 == w.slider.value and w.follow.value
    w.slider.value = 2.0                                                                        # scrubbing back stops following
    assert not w.follow.value and not watch.following and w.image.value == watch.view(watch.frame_at(2.0))[0]
    w.follow.value = True
    assert w.slider.value == 3.5 and w.image.value == watch.frames[-1][1]
    assert "live stream: 8 frames seen, the last 5 kept" in watch.static_html()

def test_tap_keeps_the_stream_going():
    frames = [(i * 0.5, np.zeros((8, 8, 3), np.uint8)) for i in range(6)]
    seen = []
    def bad(t, f):
        seen.append(t)
        if t >= 1.0: raise ValueError("no room")
    with pytest.warns(UserWarning, match="stopped showing frames at t=1.00 s: ValueError: no room"):
        got = [t for t, _ in _Tap(IteratorSource(frames), bad)]
    assert got == [t for t, _ in frames] and seen == [0.0, 0.5, 1.0]
    assert not _Tap(iter(frames), bad).realtime and _Tap(type("S", (), {"realtime": 2.0, "__iter__": lambda s: iter(())})(), bad).realtime

# ---------------------------------------------------------------- (a) the static view in Chromium

def _nb(cells):
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "cells": [{"cell_type": "code", "execution_count": i + 1, "id": f"c{i}", "metadata": {}, "source": src, "outputs": outs}
                      for i, (src, outs) in enumerate(cells)]}

def test_static_view_in_nbconvert_html(media, browser, tmp_path):
    "nbconvert's HTML of a notebook saved after displaying `player.widget` (no widget state, as JupyterLab saves it)"
    from nbconvert import HTMLExporter
    p = StreamPlayer(media["clip"], media["events"], fps=2, size=(90, 160), reference=media["reference"])
    nb = _nb([("player.widget", _displayed(p.widget))])
    import nbformat
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.from_dict(nb))
    page_path = _out(tmp_path, "static_nbconvert.html"); page_path.write_text(body)
    page = browser.new_page(viewport={"width": 1100, "height": 900}); _offline(page)
    errors = []; page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_path.resolve().as_uri(), wait_until="load")
    static = page.locator(".svlm-static")
    assert static.is_visible()
    imgs = page.evaluate("[...document.querySelectorAll('.svlm-static img')].map(i => [i.complete, i.naturalWidth])")
    assert len(imgs) == 2 and all(ok and w > 0 for ok, w in imgs), imgs
    text = _visible_text(page)
    assert "first words" in text and "reference: ref one" in text and "start (s)" in text, text
    assert page.locator(".svlm-static tbody tr").count() == 2
    assert not any(b in text for b in _BAD_TEXT), text
    assert "needs its kernel" not in text                       # the widget's placeholder is hidden next to its static view
    page.screenshot(path=str(_out(tmp_path, "static_nbconvert.png")), full_page=True)
    page.close()

_LAB_PAGE = """<!doctype html><html><body><div class="jp-OutputArea">
<div class="jp-OutputArea-child"><div class="jp-OutputArea-output">{static}</div></div>
<div class="jp-OutputArea-child"><div class="jp-OutputArea-output jupyter-widgets">{widget}</div></div>
</div></body></html>"""

def test_static_view_in_a_reopened_lab_notebook(media, browser, tmp_path):
    """Laid out as JupyterLab lays out the two outputs: with the widget model gone the static view shows and the widget's
    error is hidden; with the widget rendered the static view is hidden"""
    p = StreamPlayer(media["clip"], media["events"], fps=2, size=(90, 160), reference=media["reference"])
    static = _static_bundle(p)["text/html"]
    page = browser.new_page(viewport={"width": 1100, "height": 900}); _offline(page)
    for case, widget in (("reopened", "Error displaying widget: model not found"),
                         ("live", '<div class="widget-vbox svlm-live"><button>play</button></div>')):
        path = _out(tmp_path, f"lab_{case}.html"); path.write_text(_LAB_PAGE.format(static=static, widget=widget))
        page.goto(path.resolve().as_uri(), wait_until="load")
        text = _visible_text(page)
        if case == "reopened":
            assert page.locator(".svlm-static").is_visible() and "reference: ref one" in text
            assert "model not found" not in text, text
        else:
            assert not page.locator(".svlm-static").is_visible() and "play" in text and "reference: ref one" not in text
        page.screenshot(path=str(_out(tmp_path, f"lab_{case}.png")), full_page=True)
    page.close()

# ---------------------------------------------------------------- (b) video_html served from another folder

@contextlib.contextmanager
def _serve(folder):
    "An HTTP server on 127.0.0.1 serving `folder` (what the Jupyter server does for its root)"
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield f"http://127.0.0.1:{srv.server_port}"
    finally: srv.shutdown(); srv.server_close()

_JS_VIDEOS = """async () => {
  const vs = [...document.querySelectorAll('video')];
  const t0 = Date.now();
  while (Date.now() - t0 < 15000 && !vs.every(v => v.error || (v.readyState >= 1 && [...v.querySelectorAll('track')].every(t => t.readyState >= 2))))
    await new Promise(r => setTimeout(r, 100));
  return vs.map(v => ({id: v.id, ready: v.readyState, error: v.error && v.error.message, duration: v.duration,
                       tracks: [...v.querySelectorAll('track')].map(t => [t.readyState, t.track.cues ? t.track.cues.length : -1])}));
}"""

def test_video_html_plays_outside_the_server_root(media, browser, tmp_path):
    site = tmp_path/"site"; site.mkdir()
    pages = {"embedded": video_html(media["clip"], media["vtt"], root=site).data,
             "linked": video_html(media["clip"], media["vtt"], root=site, embed_max_bytes=0).data,
             # what video_html wrote before: a path relative to the root, outside it -- the server cannot serve it
             "before": f'<video controls preload="metadata" src="{os.path.relpath(media["clip"], site)}"></video>'}
    assert "data:video/mp4" in pages["embedded"] and f'src="{MEDIA_DIR}/' in pages["linked"]
    for name, h in pages.items(): (site/f"{name}.html").write_text(f"<!doctype html><html><body>{h.replace('<video', f'<video id={name!r}', 1)}</body></html>")
    page = browser.new_page(); _offline(page)
    res = {}
    with _serve(site) as url:
        for name in pages:
            page.goto(f"{url}/{name}.html", wait_until="load")
            res[name] = page.evaluate(_JS_VIDEOS)[0]
            if name != "before": page.screenshot(path=str(_out(tmp_path, f"video_{name}.png")))
    page.close()
    for name in ("embedded", "linked"):
        r = res[name]
        assert r["error"] is None and r["ready"] >= 1 and abs(r["duration"] - 4.0) < 0.2, (name, r)
        assert r["tracks"] == [[2, 2]], (name, r)                                  # the captions loaded: two cues
    assert res["before"]["error"] and res["before"]["ready"] == 0, res["before"]   # the old page: a black player, "Format error"

# ---------------------------------------------------------------- (c) JupyterLab with a kernel

def _free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

@contextlib.contextmanager
def _jupyterlab(root, home):
    "JupyterLab on 127.0.0.1 serving `root`, with its own settings, workspaces and a kernel running this Python"
    kern = home/"share"/"kernels"/"svlm-test"; kern.mkdir(parents=True)
    (kern/"kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                "display_name": "svlm test", "language": "python"}))
    env = {**os.environ, "JUPYTER_PATH": str(home/"share"), "JUPYTER_CONFIG_DIR": str(home/"config"), "JUPYTER_RUNTIME_DIR": str(home/"run"),
           "JUPYTERLAB_SETTINGS_DIR": str(home/"settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home/"workspaces"), "PYTHONUNBUFFERED": "1"}
    port = _free_port()
    log = open(home/"lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--ServerApp.root_dir={root}", "--IdentityProvider.token=", "--ServerApp.password=",
                             "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=", "--ServerApp.port_retries=0", "--allow-root"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try: urllib.request.urlopen(f"{url}/api/status", timeout=2); break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 60:
                    raise RuntimeError("JupyterLab did not start:\n" + (home/"lab.log").read_text()[-3000:])
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()

_TINY_ENGINE = """import mlx.core as mx
from svlm.core import Config, StreamConfig, SamplingConfig
from svlm.model import Model, preset
from svlm.tokenizer import ByteTokenizer
from svlm.stream import StreamEngine
tok = ByteTokenizer(); mx.random.seed(0)
model = Model(preset("tiny", vocab_size=tok.vocab_size, video_pad_id=tok.token_id("<|video_pad|>")))
eng = StreamEngine(model, tok, Config(stream=StreamConfig(policy="always"), sampling=SamplingConfig(temperature=1.0, max_new_tokens=4)))
"""

def _lab_notebook(media) -> dict:
    args = f'{str(media["clip"])!r}, {[e.to_dict() for e in media["events"]]!r}, fps=2, size=(90, 160), reference={[e.to_dict() for e in media["reference"]]!r}'
    nb = _nb([(f"from svlm.playback import StreamPlayer, video_html\nplayer = StreamPlayer({args})\nplayer.widget", []),
              (f"video_html({str(media['clip'])!r}, {str(media['vtt'])!r})", []),
              (f"video_html({str(media['clip'])!r}, {str(media['vtt'])!r}, embed_max_bytes=0)", []),
              ("from svlm.playback import LivePlayer\nwatch = LivePlayer(height=90)\nwatch.widget", []),
              (_TINY_ENGINE + f"res = watch.follow(eng, eng.source(video={str(media['clip'])!r}))\nlen(res.events)", [])])
    nb["metadata"]["kernelspec"] = {"name": "svlm-test", "display_name": "svlm test", "language": "python"}
    for c in nb["cells"]: c["execution_count"] = None
    return nb

def test_jupyterlab_player(media, browser, tmp_path):
    """In JupyterLab with a kernel: labelled controls, the time on the slider, controls that stay put, video_html of
    files in a temporary folder playing; saved and reopened with the kernel gone: the static view, no widget error"""
    from playwright.sync_api import expect
    site, home = tmp_path/"site", tmp_path/"home"; site.mkdir(); home.mkdir()
    (site/"player.ipynb").write_text(json.dumps(_lab_notebook(media)))
    with _jupyterlab(site, home) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000}); _offline(page)
        page.goto(f"{url}/lab/tree/player.ipynb", wait_until="load")
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
        page.get_by_text("svlm test | Idle").wait_for(timeout=60_000)               # the kernel is up
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
        live = page.locator(".svlm-live").first
        live.wait_for(state="visible", timeout=60_000)
        # labelled controls with tooltips, the time on the slider
        for label in ("play", "loop"):
            b = live.locator("button", has_text=label)
            expect(b).to_be_visible()
            assert b.get_attribute("title"), label
        expect(live.locator(".widget-label", has_text="time")).to_be_visible()
        readout = live.locator(".widget-readout")
        expect(readout).to_have_text("0.0 s")
        caption, controls = live.locator(".widget-html").first, live.locator(".widget-hbox").first
        before = (caption.bounding_box()["height"], controls.bounding_box()["y"])
        live.locator(".noUi-handle").first.focus()
        for _ in range(2): page.keyboard.press("ArrowRight")
        expect(readout).to_have_text("1.0 s")
        expect(caption).to_contain_text("reference: ref one", timeout=15_000)     # the kernel answered: the reference line is on
        after = (caption.bounding_box()["height"], controls.bounding_box()["y"])
        assert after == before, (before, after)                                   # the controls did not move
        expect(page.locator(".svlm-static").first).to_be_hidden()                  # the live widget replaces its static twin
        # video_html from a temporary folder: embedded, and linked beside the notebook
        res = page.evaluate(_JS_VIDEOS)
        assert len(res) == 2 and all(r["error"] is None and r["ready"] >= 1 for r in res), res
        assert (site/MEDIA_DIR).is_dir()
        # the live player, fed by the engine on the kernel's threads: frames, events, its labelled controls
        follow = page.locator(".svlm-live").nth(1)
        follow.wait_for(state="visible", timeout=60_000)
        expect(follow).to_contain_text("8 seen", timeout=60_000)
        expect(follow.locator("button", has_text="follow live")).to_be_visible()
        assert follow.locator("button", has_text="follow live").get_attribute("title")
        expect(follow.locator(".widget-label", has_text="time (s)")).to_be_visible()
        expect(follow.locator(".widget-readout")).to_have_text("3.5")
        assert follow.locator("img").evaluate("i => i.naturalWidth") > 0
        expect(page.locator(".svlm-static").nth(1)).to_be_hidden()
        follow.screenshot(path=str(_out(tmp_path, "lab_live_player.png")))
        n_events = int(page.locator(".jp-Cell").nth(4).locator(".jp-OutputArea-output").last.inner_text().strip())
        assert n_events >= 3 and follow.locator(".widget-html").nth(1).inner_text().count(" s") >= 3, n_events
        page.screenshot(path=str(_out(tmp_path, "lab_live.png")), full_page=True)
        # save, stop the kernel, reopen: the widget's model is gone
        page.locator(".jp-Cell .jp-InputPrompt").first.click()                    # focus out of the widget, into the notebook
        for attempt in range(3):   # a first save right after the slider moved can stay at "Saving started": ask again
            page.locator(".lm-MenuBar-item", has_text="File").first.click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).first.click()
            t0 = time.time()
            while "svlm-static" not in (site/"player.ipynb").read_text() and time.time() - t0 < 15: time.sleep(0.2)
            if "svlm-static" in (site/"player.ipynb").read_text(): break
        saved = json.loads((site/"player.ipynb").read_text())
        assert "svlm-static" in json.dumps(saved["cells"][0]["outputs"]) and "widgets" not in saved["metadata"]
        for k in json.load(urllib.request.urlopen(f"{url}/api/kernels")):
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels/{k['id']}", method="DELETE"))
        page.reload(wait_until="load")
        page.get_by_text("svlm test | Idle").wait_for(timeout=60_000)               # a new kernel, without the widget's model
        static = page.locator(".svlm-static")
        static.first.wait_for(state="visible", timeout=60_000)
        expect(static.nth(1)).to_be_visible()
        page.wait_for_function("document.body.textContent.includes('model not found')", timeout=30_000)   # JupyterLab gave up on the model
        text = _visible_text(page)
        assert "model not found" not in text and "Error displaying widget" not in text, text
        assert "reference: ref one" in text and page.locator(".svlm-live").count() == 0
        assert "live stream: 8 frames seen" in text                                # the live player's static view, refreshed after the run
        assert page.evaluate("[...document.querySelectorAll('.svlm-static img')].every(i => i.naturalWidth > 0)")
        page.screenshot(path=str(_out(tmp_path, "lab_reopened.png")), full_page=True)
        page.close()
