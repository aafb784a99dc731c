"Dense checks of svlm.eval and svlm.playback without a story: randomized round trips, matching properties against brute force, the ipywidgets player driven without a browser, and clean saved notebooks."
import io, itertools, json, math, random
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
import svlm
from svlm.core import InputError
from svlm.events import (Event, write_events, read_events, to_webvtt, write_vtt, read_vtt, vtt_time, parse_vtt_time, check_metric,
                         write_metrics, read_metrics, summarize_run)
from svlm.eval import (merge_utterances, match_utterances, prf, words, lcs_length, rouge_l, word_f1, score_clip, score_clips, report,
                       plot_report, event_kind, event_team, event_mentions, LABELS, event_rows, side_by_side)
from svlm.synth import script_clip, KINDS
from svlm.playback import StreamPlayer, video_html, jpeg
from svlm.video import write_test_clip, frame_index as barcode

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["Red", "shoots,", "blocked!", "<b>", "a&b", "x > y", "Olé", "进球了", "🎉", "don't", "3-1", "--> ", "&amp;", "save"]

def rand_events(rng, n):
    out = []
    for _ in range(n):
        t0 = round(rng.uniform(0, 5000), 3)
        out.append(Event(t0, round(t0 + rng.uniform(0, 5), 3), " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))),
                         rng.choice(["speak", "feedback", "correct"]), round(rng.random(), 3), round(rng.uniform(0, 500), 2)))
    return out

# ---- files

def test_jsonl_round_trip(tmp_path):
    rng = random.Random(0)
    evs = rand_events(rng, 200)
    assert write_events(tmp_path/"e.jsonl", evs) == 200
    assert read_events(tmp_path/"e.jsonl") == evs
    assert write_events(tmp_path/"d.jsonl", [e.to_dict() for e in evs]) == 200           # dicts are checked and accepted
    assert read_events(tmp_path/"d.jsonl") == evs

def test_jsonl_errors(tmp_path):
    p = tmp_path/"e.jsonl"
    p.write_text('{"start": 0, "end": 1, "text": "a"}\n{"start": 0, "end": 1, "text": "a"\n')
    with pytest.raises(InputError, match=r"e.jsonl:2: malformed JSON"): read_events(p)
    p.write_text('[1, 2]\n')
    with pytest.raises(InputError, match=r"e.jsonl:1: field '\$'"): read_events(p)
    p.write_text('{"start": 0, "end": 1, "text": "a", "action": ""}\n')
    with pytest.raises(InputError, match=r"e.jsonl:1: field 'action'"): read_events(p)
    p.write_text('{"start": NaN, "end": 1, "text": "a"}\n')
    with pytest.raises(InputError, match=r"e.jsonl:1: field 'start': expected a finite number"): read_events(p)
    e = Event(np.float32(1), np.int64(2), "x", confidence=np.float32(0.5))          # numpy numbers come out as plain floats
    assert json.loads(json.dumps(e.to_dict()))["confidence"] == 0.5
    with pytest.raises(InputError, match="latency"): Event(0, 1, "a", latency_ms=-1)
    with pytest.raises(InputError, match="start"): Event(-0.5, 1, "a")
    with pytest.raises(InputError, match="action"): write_events(p, [{"start": 0, "end": 1, "text": "a", "action": None}])

def test_vtt_round_trip(tmp_path):
    rng = random.Random(1)
    evs = rand_events(rng, 300)
    write_vtt(tmp_path/"e.vtt", evs)
    back = read_vtt(tmp_path/"e.vtt")
    want = sorted(evs, key=lambda e: (e.start, e.end))
    assert [(e.start, e.end, e.text) for e in back] == [(e.start, e.end, " ".join(e.text.split())) for e in want]
    text = (tmp_path/"e.vtt").read_text()
    assert text.count("-->") == 300                      # "-->" in a text is escaped (its ">") and cannot start a cue
    assert "<" not in text.replace("-->", "")

def test_vtt_format():
    assert to_webvtt([]) == "WEBVTT\n\n"
    assert vtt_time(0.0006) == "00:00:00.001" and vtt_time(360000) == "100:00:00.000"
    for t in (0, 0.001, 59.999, 61.25, 3599.999, 3600, 123456.789):
        assert parse_vtt_time(vtt_time(t)) == pytest.approx(t, abs=5e-4)
    assert parse_vtt_time("01:02.500") == 62.5
    for bad in ("1:02.500", "00:60.000", "00:00:00,000", "00:00.5"):
        with pytest.raises(InputError, match="malformed timestamp"): parse_vtt_time(bad)
    with pytest.raises(InputError, match="negative"): vtt_time(-1)

def test_vtt_errors(tmp_path):
    p = tmp_path/"x.vtt"
    p.write_text("WEBVTT\n\n00:00:02.000 --> 00:00:01.000\nback\n")
    with pytest.raises(InputError, match=r"x.vtt:3: field 'timing': cue ends"): read_vtt(p)
    p.write_text("WEBVTT\n\nid\nno timing here\n")
    with pytest.raises(InputError, match=r"x.vtt:3: field 'timing': cue without a timing line"): read_vtt(p)
    p.write_text("WEBVTTX\n")
    with pytest.raises(InputError, match="field 'header'"): read_vtt(p)
    p.write_text("WEBVTT\n\nSTYLE\n::cue { color: red }\n\nREGION\nid:r1\n\n00:00.000 --> 00:01.000 region:r1\n<c.yellow>hi</c> &lt;3\n")
    assert read_vtt(p) == [Event(0.0, 1.0, "hi <3")]

# ---- metrics

def test_metrics(tmp_path):
    rows = [dict(t0=float(i), t1=i + 1.0, latency_ms=float(i % 7), ttft_ms=None if i % 5 == 0 else 1.0, tokens=i % 3,
                 cache_tokens=100 + i, peak_mb=10.0, spoke=i % 4 == 0) for i in range(40)]
    assert write_metrics(tmp_path/"m.jsonl", rows) == 40
    assert read_metrics(tmp_path/"m.jsonl") == rows
    s = summarize_run(rows, wall_seconds=8.0, frames=80)
    lat = [r["latency_ms"] for r in rows]
    assert s["realtime_factor"] == 5.0 and s["frames_per_second"] == 10.0
    assert s["latency_ms_p50"] == np.percentile(lat, 50) and s["latency_ms_p95"] == np.percentile(lat, 95)
    assert s["ttft_ms_p50"] == 1.0 and s["utterances"] == 10 and s["cache_tokens_last"] == 139
    assert s["latency_late_over_early"] == pytest.approx(np.median(lat[-10:]) / np.median(lat[:10]))
    json.dumps(s)
    e = summarize_run([], wall_seconds=1.0)
    assert e["chunks"] == 0 and e["latency_ms_p50"] is None and e["realtime_factor"] == 0
    with pytest.raises(InputError, match="wall_seconds"): summarize_run(rows, wall_seconds=0)
    with pytest.raises(InputError, match="field 't1'"): check_metric({**rows[0], "t1": -1.0})
    with pytest.raises(InputError, match="field 'spoke'"): check_metric({**rows[0], "spoke": 1})
    with pytest.raises(InputError, match="field 'tokens'"): check_metric({**rows[0], "tokens": True})

# ---- utterances and matching

def test_merge():
    E = lambda a, b, t="w": Event(a, b, t)
    assert merge_utterances([E(2, 3, "b"), E(1, 2, "a"), E(3, 4, " "), E(5, 6, "c")]) == [E(1, 3, "a b"), E(5, 6, "c")]
    assert merge_utterances([E(0, 1, "a"), E(0.5, 1.5, "b")]) == [E(0, 1.5, "a b")]   # overlapping chunks merge
    assert merge_utterances([E(0, 1, "a"), E(1.0000001, 2, "b")]) == [E(0, 2, "a b")]
    assert len(merge_utterances([E(0, 1, "a"), E(1, 2, "b")], gap=None)) == 2
    assert merge_utterances([E(0, 1, "a"), E(2, 3, "b")], gap=1.0) == [E(0, 3, "a b")]
    first = Event(0, 1, "a", "feedback", 0.6, 30.0)
    assert merge_utterances([first, Event(1, 2, "b", "speak", 0.9, 10.0)]) == [Event(0, 2, "a b", "feedback", 0.6, 30.0)]

def brute_max_matching(ps, rs, tol):
    "Largest number of one-to-one pairs closer than tol, by brute force"
    best = 0
    for k in range(min(len(ps), len(rs)), 0, -1):
        for pi in itertools.permutations(range(len(ps)), k):
            for ri in itertools.combinations(range(len(rs)), k):
                if all(abs(ps[a] - rs[b]) < tol for a, b in zip(pi, ri)): return k
    return best

def test_matching_properties():
    rng = random.Random(2)
    for _ in range(300):
        ps = [round(rng.uniform(0, 12) * 2) / 2 for _ in range(rng.randint(0, 5))]
        rs = [round(rng.uniform(0, 12) * 2) / 2 for _ in range(rng.randint(0, 5))]
        m = match_utterances([Event(t, t + 1, "x") for t in ps], [Event(t, t + 1, "x") for t in rs])
        assert len({a for a, _, _ in m}) == len(m) == len({b for _, b, _ in m})                     # one-to-one
        assert all(abs(dt) < 1.5 and dt == round(ps[a] - rs[b], 6) for a, b, dt in m)
        free_p, free_r = set(range(len(ps))) - {a for a, _, _ in m}, set(range(len(rs))) - {b for _, b, _ in m}
        assert not any(abs(ps[a] - rs[b]) < 1.5 for a in free_p for b in free_r)                     # maximal
        best = brute_max_matching(ps, rs, 1.5)
        assert best / 2 <= len(m) <= best                                                             # greedy is within 2x
        p, r, f = prf(len(m), len(ps), len(rs))
        assert 0 <= f <= 1 and (f == 1) == (len(m) == len(ps) == len(rs))

def test_matching_closest_first():
    # references 0 and 1; predictions 0.9 and 1.1: 0.9->1 (0.1) is taken before 0.9->0 (0.9), so 1.1 has to take 0 (1.1)
    m = match_utterances([Event(0.9, 1, "x"), Event(1.1, 2, "x")], [Event(0, 1, "x"), Event(1, 2, "x")])
    assert m == [(1, 0, 1.1), (0, 1, -0.1)]                                          # sorted by reference
    # ties: equal distances go to the earlier reference, then the earlier prediction
    m = match_utterances([Event(1, 2, "x")], [Event(0, 1, "x"), Event(2, 3, "x")])
    assert m == [(0, 0, 1.0)]
    m = match_utterances([Event(0, 1, "x"), Event(2, 3, "x")], [Event(1, 2, "x")])
    assert m == [(0, 0, -1.0)]

# ---- words

def test_words_lcs_brute_force():
    rng = random.Random(3)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        subs = {s for k in range(len(a) + 1) for s in itertools.combinations(a, k)}
        brute = max(k for k in range(len(a) + 1) if any(len(s) == k and _is_subseq(s, b) for s in subs))
        assert lcs_length(a, b) == brute

def _is_subseq(s, b):
    it = iter(b)
    return all(x in it for x in s)

def test_rouge_against_rouge_score():
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    sc = rs.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(4)
    V = ["Red", "shoots", "blocked!", "Great", "save", "by", "Blue", "the", "goal", "GOAL", "pass,", "forward.", "keeper's", "3-1"]
    for _ in range(2000):
        a = " ".join(rng.choice(V) for _ in range(rng.randint(1, 12)))
        b = " ".join(rng.choice(V) for _ in range(rng.randint(1, 12)))
        assert rouge_l(a, b) == pytest.approx(sc.score(b, a)["rougeL"].fmeasure, abs=1e-12)

def test_word_f1():
    assert word_f1("the the cat", "the cat cat") == pytest.approx(2 * 2 / 6)       # shared: one "the", one "cat"
    assert word_f1("A, b!", "a B") == 1.0 and rouge_l("A, b!", "b a") == 0.5
    assert word_f1("", "") == 1.0 and rouge_l("", "x") == 0.0
    assert words("it's 3-1!") == ["it", "s", "3", "1"]

# ---- event kinds

def test_event_kind_agrees_with_the_synthetic_labels():
    evs = [e for seed in range(1000, 1600) for e in script_clip(seed)]
    assert {e.kind for e in evs} == set(KINDS)                                       # every kind is exercised
    bad = [(e.text, e.kind, event_kind(e.text)) for e in evs if event_kind(e.text) != e.kind]
    assert not bad, bad[:10]
    bad = [(e.text, e.team, event_team(e.text)) for e in evs
           if event_team(e.text) != (None if e.kind == "out" else e.team if e.team.lower() in words(e.text) else None)]   # a ball out is nobody's
    assert not bad, bad[:10]

def garble(rng, text):
    "The same sentence in other case, spacing and punctuation: commas kept or dropped, any ending"
    ws = [rng.choice([w.lower(), w.upper(), w.capitalize()]) for w in text.split()]
    ws = [w.rstrip(".!?") + rng.choice(["", ".", "!", " ...", "!!", "?!"]) if k == len(ws) - 1 else w.rstrip(",") if rng.random() < 0.5 else w
          for k, w in enumerate(ws)]
    return rng.choice(["", " ", "  "]) + rng.choice([" ", "  "]).join(ws) + rng.choice(["", " ", "\n"])

def test_event_kind_ignores_case_and_punctuation():
    rng = random.Random(6)
    evs = {e.text: e for seed in range(50) for e in script_clip(seed)}
    for text, e in evs.items():
        for _ in range(20):
            g = garble(rng, text)
            assert (event_kind(g), event_team(g)) == (event_kind(text), event_team(text)), (text, g)

def test_event_kind_phrasings():
    for text, want in {"Blue shoots and scores!": "goal", "Into the net, Red!": "goal", "Out for a goal kick": "out",
                       "Goal kick to Blue.": "out", "Saved! No goal.": "save", "Red shot, blocked": "shot", "Red fires wide": "out",
                       "Red plays it out wide to the wing": "pass", "what a catch by blue": "save", "Blue keeps possession": "pass",
                       "Red": None, "Nice one.": None, "": None, "a b c": None}.items():
        assert event_kind(text) == want, (text, event_kind(text), event_mentions(text))
    assert event_team("Red shoots, saved by Blue!") == "Blue" and event_team("Red shoots, blocked!") == "Red"
    assert event_team("Goal! Blue lead 1-0.") == "Blue" and event_team("Out for a throw-in.") is None

# ---- scoring

def test_score_clips_pooled():
    rng = random.Random(5)
    clips = []
    for _ in range(20):
        ref = [Event(t, t + 1, rng.choice(WORDS)) for t in sorted(rng.sample(range(0, 60, 3), rng.randint(0, 6)))]
        pred = [Event(max(0.0, e.start + rng.choice([-2, -1, 0, 1, 2])), e.end + 2, rng.choice(WORDS)) for e in ref if rng.random() < 0.8]
        clips.append((pred, ref))
    s = score_clips(clips)
    for k in ("n_pred", "n_ref", "matched"): assert s["pooled"][k] == sum(c[k] for c in s["clips"])
    assert s["pooled"]["f1"] == pytest.approx(prf(s["pooled"]["matched"], s["pooled"]["n_pred"], s["pooled"]["n_ref"])[2])
    pairs = [x for c in s["clips"] for x in c["pairs"]]
    assert s["pooled"]["rouge_l"] == pytest.approx(np.mean([x["rouge_l"] for x in pairs]))
    assert s["clip_mean"]["f1"] == pytest.approx(np.mean([c["f1"] for c in s["clips"]]))
    json.dumps(s)
    assert "| **pooled** |" in s._repr_markdown_()
    for c in s["clips"] + [s["pooled"]]: assert c["matched_exact"] <= c["matched"] and c["f1_exact"] <= c["f1"] + 1e-12
    assert np.array(s["pooled"]["confusion"]["counts"]).tolist() == np.sum([c["confusion"]["counts"] for c in s["clips"]], axis=0).tolist()
    assert np.sum(s["pooled"]["confusion"]["counts"]) == s["pooled"]["matched"]

def synth_clip(seed):
    "Reference utterances of a scripted clip, one per event, at whole seconds"
    return [Event(float(round(e.t)), round(e.t) + 1.0, e.text) for e in script_clip(seed)]

def test_event_accuracy_by_construction():
    rng = random.Random(7)
    clips = [synth_clip(s) for s in range(40)]
    kinds = {k: next(e.text for s in range(40) for e in script_clip(s) if e.kind == k) for k in KINDS}   # one line of each kind
    same = score_clips([([Event(e.start, e.end, garble(rng, e.text)) for e in ref], ref) for ref in clips])["pooled"]
    assert (same["f1"], same["f1_exact"], same["event_acc"], same["team_acc"]) == (1.0, 1.0, 1.0, 1.0)
    toy = score_clips([([Event(e.start, e.end, "Red passes forward.") for e in ref], ref) for ref in clips])["pooled"]
    n_pass = sum(event_kind(e.text) == "pass" for ref in clips for e in ref)
    assert toy["f1"] == toy["f1_exact"] == 1.0 and toy["event_acc"] == pytest.approx(n_pass / toy["matched"])     # the toy's failure mode
    C = np.array(toy["confusion"]["counts"])
    assert C[:, LABELS.index("pass")].sum() == C.sum() == toy["matched"]                                           # one column
    # every line said as another kind, one second late: on time at ±1.5 s, never in the exact chunk, never the right kind
    other = {k: kinds[KINDS[(i + 1) % len(KINDS)]] for i, k in enumerate(KINDS)}
    wrong = score_clips([([Event(e.start + 1, e.end + 1, other[event_kind(e.text)]) for e in ref], ref) for ref in clips])["pooled"]
    assert (wrong["f1"], wrong["f1_exact"], wrong["event_acc"]) == (1.0, 0.0, 0.0)
    C = np.array(wrong["confusion"]["counts"])
    assert np.trace(C) == 0 and all(C[i, (i + 1) % len(KINDS)] == C[i].sum() for i in range(len(KINDS)))

def test_side_by_side_rows():
    ref = [Event(3, 4, "Great save by Blue!"), Event(8, 9, "Goal for Red!"), Event(12, 13, "Out for a throw-in.")]
    pred = [Event(4, 5, "Blue passes forward."), Event(8, 9, "Goal for Red!"), Event(20, 21, "Red passes forward.")]
    sc = score_clip(pred, ref)
    assert [(r["time"], r["reference"], r["model"], r["kind"]) for r in event_rows(sc)] == [
        (3, "Great save by Blue!", "Blue passes forward. (+1 s)", "no: pass"), (8, "Goal for Red!", "Goal for Red!", "yes"),
        (12, "Out for a throw-in.", "", "missed"), (20, "", "Red passes forward.", "false alarm")]
    lines = side_by_side(sc, width=12).splitlines()
    assert len(lines) == 5 and lines[0].split() == ["time", "reference", "model", "kind", "right?"]
    assert "Great save …" in lines[1] and lines[3].endswith("missed")

def test_score_edge_cases():
    one = [Event(1, 2, "goal")]
    assert {k: score_clip([], [])[k] for k in ("precision", "recall", "f1", "rouge_l")} == dict(precision=1.0, recall=1.0, f1=1.0, rouge_l=None)
    assert (score_clip([], one)["precision"], score_clip([], one)["recall"], score_clip([], one)["f1"]) == (1.0, 0.0, 0.0)
    assert (score_clip(one, [])["precision"], score_clip(one, [])["recall"], score_clip(one, [])["f1"]) == (0.0, 1.0, 0.0)
    assert score_clip(one, one)["f1"] == 1.0 and score_clip(one, one, tol=0.1)["dt_mean"] == 0.0
    assert (score_clip(one, one)["event_acc"], score_clip(one, one)["team_acc"]) == (1.0, None)     # "goal" names no team
    assert (score_clip([], one)["event_acc"], score_clip([], one)["f1_exact"]) == (None, 0.0)
    assert score_clip([Event(2, 3, "goal")], one)["f1_exact"] == 0.0 and score_clip([Event(2, 3, "goal")], one, chunk_s=4.0)["f1_exact"] == 1.0

def test_report_and_plot():
    ref = [Event(3, 4, "Red passes forward."), Event(7, 9, "Red shoots, blocked!")]
    pred = [Event(4, 5, "Red passes."), Event(11, 12, "Corner.")]
    rows = [dict(t0=float(i), t1=i + 1.0, latency_ms=10.0, ttft_ms=5.0, tokens=3, cache_tokens=50 * i, peak_mb=2.0, spoke=i in (4, 11))
            for i in range(12)]
    rep = report(pred, ref, rows, wall_seconds=1.2, frames=24)
    assert rep["score"]["matched"] == 1 and rep["run"]["realtime_factor"] == pytest.approx(10.0)
    json.dumps(rep)
    assert len(plot_report(rep).axes) == 4
    assert len(plot_report(report(pred, ref), span=(0, 6)).axes) == 1
    assert report(pred, ref)["run"] is None

# ---- playback

@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_test_clip(tmp_path_factory.mktemp("clip")/"bar.mp4", duration=6.0, fps=10)   # frame i carries i as a barcode

def test_player_frames_follow_time(clip):
    p = StreamPlayer(clip, [Event(1, 2, "one"), Event(1.5, 3, "two & <three>")], fps=2, size=(90, 160), block=3, max_blocks=2)
    assert len(p) == 12
    for k in range(len(p)): assert barcode(p.frame(k)) == 5 * k                      # 2 fps of a 10 fps file: every fifth frame
    assert len(p._blocks) == 2
    assert [p.frame_index(t) for t in (0.2, 1.0, 2.74, 99)] == [0, 2, 5, 11]
    assert [getattr(p.caption_at(t), "text", None) for t in (0.9, 1.2, 1.5, 2.9, 3.0)] == [None, "one", "two & <three>", "two & <three>", None]
    assert "two &amp; &lt;three&gt;" in p.view(3)[1]

def test_player_widget_without_browser(clip, tmp_path):
    write_vtt(tmp_path/"c.vtt", [Event(1, 2, "one"), Event(4, 5, "four")])
    p = StreamPlayer(clip, tmp_path/"c.vtt", fps=2, size=(90, 160), reference=[Event(4, 6, "ref four")])
    assert p._widget is None                                                        # nothing built until asked
    w = p.widget
    assert w.play.max == len(w.slider.options) - 1 == 11 and w.play.interval == 500
    first = w.image.value
    w.slider.value = 8                                                               # the slider drives the frame and the caption
    assert w.image.value == p.view(8)[0] != first
    assert barcode(np.asarray(Image.open(io.BytesIO(w.image.value)))) == 40          # the JPEG shown is frame 8 (source frame 40)
    assert "four" in w.caption.value and "reference: ref four" in w.caption.value
    p.seek(1.2)
    assert w.slider.value == 2 and "one" in w.caption.value
    assert p.widget is w

def test_video_html_references_files(tmp_path):
    h = video_html(tmp_path/"v d.mp4", tmp_path/"c.vtt", width=320, root=tmp_path)
    assert 'src="v%20d.mp4"' in h.data and 'src="c.vtt"' in h.data and "base64" not in h.data
    assert "<track" not in video_html("a.mp4").data

def test_static_fallback(clip):
    p = StreamPlayer(clip, [Event(1, 2, "a"), Event(2, 3, "b"), Event(5, 5.5, "c")], fps=2, size=(90, 160))
    s = p._repr_html_()
    assert s.count("<figure") == 2 and s.count("<tr>") == 4 and "a b" in s
    assert jpeg(p.frame(0), width=80)[:2] == b"\xff\xd8"
    many = StreamPlayer(clip, [Event(i * 0.1, i * 0.1 + 0.05, f"e{i}") for i in range(50)], fps=2, size=(90, 160))
    assert "and 20 more events" in many.static_html(max_rows=30)

@pytest.mark.parametrize("name", ["13_eval.ipynb", "16_playback.ipynb"])
def test_saved_notebook_is_small_and_stateless(name):
    path = ROOT/"nbs"/name
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"]
    assert path.stat().st_size < 400_000
    mimes = {m for c in nb["cells"] for o in c.get("outputs", []) for m in o.get("data", {})}
    assert not any("widget" in m or m.startswith("video/") for m in mimes)
    assert "data:video" not in path.read_text()
