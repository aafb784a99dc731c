"Synthetic workouts, overlapping chunks, rule baselines and their scores, the coach's context, its samples and its streaming loop (svlm.coach)."
import svlm                                    # first: it loads OpenBLAS before MLX does
import json, math, os, subprocess, sys
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
from svlm.core import InputError, load_config
from svlm.data import AnnotationFile
from svlm.events import Event
from svlm.stream import EveryPolicy, RandomPolicy, MotionPolicy, ThresholdPolicy, ActionPolicy
from svlm.synth import frames_digest, write_annotations
from svlm.tokenizer import ACTION_TOKENS, ByteTokenizer
from svlm.train import build_model
from svlm.video import FrameChunk, iter_chunks
from svlm.coach import *
from svlm.coach import _at

ROOT = Path(__file__).resolve().parents[1]
SHORT = WorkoutConfig(duration_s=10.0, fps=4)

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "Two short training workouts and one held-out one, written and read back as records"
    d = tmp_path_factory.mktemp("coach")
    return d, coach_records(make_workouts(d, "train", 2, SHORT)), coach_records(make_workouts(d, "heldout", 1, SHORT))

def _chunks(rec, size=(112, 196)):
    from svlm.video import read_frames
    t, f = read_frames(rec.video_path, rec.start, rec.end, fps=rec.fps, size=size)
    return workout_chunks(t, f, end=rec.end)

# --- workouts

def test_workouts_are_deterministic_and_every_feedback_follows_its_rep():
    for seed in range(12):
        w = script_workout(seed)
        assert w == script_workout(seed) and w.exercise == EXERCISES[seed % 3]
        assert all(1.8 <= r.end - r.start <= 3.4 for r in w.reps) and all(a.end <= b.start for a, b in zip(w.reps, w.reps[1:]))
        for f in w.feedback:
            r = w.reps[f.rep]
            assert f.t == round(r.bottom + 1.25, 3)
            assert (f.action, f.text) == (("feedback", CORRECTIONS[r.error]) if r.error else ("correct", PRAISE))
            assert feedback_words(f)[-1][1] <= w.duration_s
        clean = 0                                                # praise after exactly 3 clean reps since the last feedback
        said = {f.rep: f for f in w.feedback}
        for i, r in enumerate(w.reps):
            if r.error: clean = 0; continue
            clean += 1
            if clean == 3:
                assert said[i].action == "correct" if i in said else r.bottom + 1.25 + 1.37 > w.duration_s   # or its words would end too late
                clean = 0
    assert frames_digest(workout_frames(script_workout(4), np.arange(8)/2)) == frames_digest(workout_frames(script_workout(4), np.arange(8)/2))
    assert script_workout(0).reps != script_workout(1).reps
    assert script_workout(5, exercise="lunge").exercise == "lunge"
    with pytest.raises(InputError, match="unknown exercise"): script_workout(0, exercise="plank")

def test_every_error_is_visible_at_the_bottom():
    look = Look(0.42, 0.47, SHIRTS[0], WALLS[0])
    for ex, errs in ERRORS.items():
        lk = replace(look, x0=0.18 if ex == "pushup" else 0.47)
        clean = draw_figure(gym_background(196, 112).copy(), pose(ex, 1.0), lk)
        for err in errs:
            J = pose(ex, 0.4) if err == "shallow" else pose(ex, 1.0, err, 1.0)
            img = draw_figure(gym_background(196, 112).copy(), J, lk)
            changed = (np.abs(img.astype(int) - clean).sum(-1) > 60).sum()
            assert changed > 40, (ex, err, changed)          # dozens of pixels, not a shade
    full, caved = pose("squat", 1.0), pose("squat", 1.0, "knees_in", 1.0)
    assert full["knee"][0] < full["knee_far"][0] and caved["knee"][0] > caved["knee_far"][0]
    assert pose("squat", 0.4)["hip"][1] - pose("squat", 0.4)["knee"][1] > 0.25 > abs(full["hip"][1] - full["knee"][1])
    assert pose("pushup", 1.0, "hips_sag", 1.0)["hip"][1] < pose("pushup", 1.0)["hip"][1] - 0.2
    assert pose("lunge", 1.0, "back_round", 1.0)["bulge"] == 0.2 and pose("lunge", 1.0)["bulge"] == 0.0
    assert workout_frame(script_workout(1), 2.0, 84, 56).shape == (56, 84, 3)

# --- files and chunks

def test_annotations_map_each_feedback_onto_one_overlapping_chunk(data):
    d, train, held = data
    for rec in train + held:
        spans = [(c.start, c.end) for c in rec.chunks]
        assert spans == chunk_spans(10.0) and spans[1] == (1.5, 3.5)
        said = [c for c in rec.chunks if c.text]
        assert len(said) == len(rec.events) == len(script_workout(int(Path(rec.video).stem[-3:]) + (10_000 if "heldout" in rec.video else 0), SHORT).feedback)
        assert all(abs(c.end - e["t"]) <= 0.75 + 1e-9 and split_action(c.text) == (f"<{e['action']}>", e["text"]) for c, e in zip(said, rec.events))
        assert rec.meta["exercise"] in EXERCISES and all(len(r) == 3 for r in rec.meta["reps"])
    line = AnnotationFile(d/"coach_train_with_seeks.jsonl").raw(0)
    words = line[1]["content"][0]["text_stream"]
    assert words[0][2] in ACTION_TOKENS and words[0][0] == words[0][1]
    assert line[0]["content"][1]["text"] == workout_query(line[0]["content"][1]["exercise"])
    bad = json.loads(json.dumps(line)); bad[1]["content"][0]["text_stream"] = [[1.0, 1.2, "Go"], [1.2, 1.5, "lower"]]
    write_annotations(d/"bad_with_seeks.jsonl", [bad])
    with pytest.raises(InputError, match="before any action token"): coach_records(d/"bad_with_seeks.jsonl")

@pytest.mark.parametrize("duration,fps", [(30.0, 2.0), (7.3, 2.0), (10.0, 4.0), (2.0, 2.0)])
def test_chunk_spans_are_what_a_stream_is_cut_into(duration, fps):
    t = np.arange(math.ceil(round(duration*fps, 6)))/fps
    f = np.zeros((len(t), 2, 2, 3), np.uint8)
    assert chunk_spans(duration, 2.0, 0.5, fps) == [(c.start, c.end) for c in iter_chunks(zip(t, f), 2.0, 0.5, duration)]
    assert all(b - a <= 2.0 + 1e-9 for a, b in chunk_spans(duration, 2.0, 0.5, fps))

def test_assign_feedback_by_hand():
    spans = chunk_spans(30.0)[:4]                                   # ends 2, 3.5, 5, 6.5
    assert assign_feedback(spans, [2.6, 2.75, 4.4]) == [0, 1, 2]       # nearest end; a tie goes to the later chunk
    assert assign_feedback(spans, [5.0, 5.2]) == [2, 3]                # taken: the next free one
    assert assign_feedback(spans, [0.0, 9.0]) == [0, 3]
    with pytest.raises(InputError, match="no free chunk"): assign_feedback(spans[:1], [1.0, 2.0])
    assert utterances([[1, 1, "<feedback>"], [1, 1.3, "Go"], [1.3, 1.6, "lower"], [4, 4, "<correct>"], [4, 4.2, "Nice"]]) == [(1.0, "feedback", "Go lower"), (4.0, "correct", "Nice")]
    assert split_action("") == ("<next>", "") and split_action("<correct> Great form") == ("<correct>", "Great form")
    with pytest.raises(InputError, match="action token"): split_action("Go lower")

# --- rules and scores

def _fake(n, frames=None):
    return [FrameChunk(a, b, np.array([a]), np.zeros((1, 2, 2, 3), np.uint8) if frames is None else frames(k)) for k, (a, b) in enumerate(chunk_spans(30.0)[:n])]

def test_rule_policies_make_feedback_events():
    seven = _fake(7)
    assert [e.end for e in rule_feedback(EveryPolicy(3), seven)] == [5.0, 9.5]
    assert [e.end for e in rule_feedback(EveryPolicy(1), seven, min_interval_s=3.0)] == [2.0, 5.0, 8.0, 11.0]
    assert all(e.action == "feedback" and e.text == "Go lower" for e in rule_feedback(EveryPolicy(1), seven))
    a, b = rule_feedback(RandomPolicy(0.5, seed=3), _fake(20)), rule_feedback(RandomPolicy(0.5, seed=3), _fake(20))
    assert a == b and 0 < len(a) < 20                                  # seeded: the same draws
    still = _fake(5, lambda k: np.full((4, 8, 8, 3), 100, np.uint8))
    moving = _fake(5, lambda k: np.stack([np.full((8, 8, 3), 60*(i % 2), np.uint8) for i in range(4)]))
    assert rule_feedback(MotionPolicy(5.0), still) == [] and len(rule_feedback(MotionPolicy(5.0), moving)) == 5

def test_scores_by_hand():
    E = lambda t, text, a="feedback": Event(t - 2, t, text, a)
    ref = [dict(t=3.0, action="feedback", text="Go lower"), dict(t=8.0, action="feedback", text="Push your knees out"),
           dict(t=14.0, action="feedback", text="Keep your back straight"), dict(t=20.0, action="correct", text=PRAISE)]
    pred = [E(3.5, "Go lower"), E(7.5, "Go lower"), E(9.1, "Push your knees out"), E(20.0, "Go lower"), E(20.5, PRAISE, "correct")]
    s = score_feedback(pred, ref, 30.0)
    assert (s["n_pred"], s["n_ref"], s["matched"], s["named"], s["false_alarms"]) == (4, 3, 2, 1, 2)
    assert np.allclose([s["precision"], s["recall"], s["f1"], s["named_acc"], s["false_alarms_per_min"]], [0.5, 2/3, 4/7, 0.5, 4.0])
    p = score_feedback(pred, ref, 30.0, action="correct")
    assert (p["matched"], p["f1"], p["named_acc"]) == (1, 1.0, 1.0)      # praise names no error, and neither does its reference
    assert score_feedback([E(4.0, "Go lower")], ref, 30.0)["matched"] == 0   # |4 - 3| = 1 is not < 1: strict, as FitCoach
    assert score_feedback([], [], 60.0)["f1"] == 1.0 and score_feedback([], ref, 60.0)["recall"] == 0.0
    pooled = pool_scores([s, score_feedback([E(5.0, "Go lower")], [dict(t=5.4, action="feedback", text="Go lower")], 30.0)])
    assert (pooled["n_pred"], pooled["n_ref"], pooled["matched"], pooled["named"]) == (5, 4, 3, 2)
    assert np.isclose(pooled["f1"], 2*(3/5)*(3/4)/(3/5 + 3/4)) and np.isclose(pooled["false_alarms_per_min"], 2.0)
    assert [error_of(t) for t in ("GO LOWER", "push your knees out!", PRAISE)] == ["shallow", "knees_in", None]
    assert "| every |" in scores_table({"every": pooled}) and "**0.67**" in scores_table({"every": pooled})

# --- context

def test_context_is_cleared_after_feedback_and_timeout_and_keeps_its_summary():
    spans = chunk_spans(30.0)
    ctx = CoachContext(timeout_s=6.0, max_chunks=8)
    assert [ctx.add(a, b, payload=k) for k, (a, b) in enumerate(spans[:4])] == [False, False, False, True]
    assert (len(ctx), ctx.since, ctx.payloads, ctx.log) == (1, 4.5, [3], [(4.5, "timeout")])
    ctx.handle = [object()]
    ctx.note_reps(3); ctx.feedback(5.0, "<feedback>", "Go lower")
    assert (len(ctx), ctx.handle, ctx.since, ctx.log[-1]) == (0, None, 5.0, (5.0, "feedback"))
    assert ctx.summary == dict(reps=3, corrections=1, praise=0, last="Go lower") and ctx.summary_text == "3 reps"
    assert [ctx.add(a, b) for a, b in spans[3:8]] == [False]*4 + [True]          # 6 s after the feedback: 4 chunks, then a clear
    ctx.feedback(12.5, "correct", PRAISE); ctx.note_reps(5)
    assert ctx.summary == dict(reps=5, corrections=1, praise=1, last=PRAISE)
    small = CoachContext(timeout_s=100.0, max_chunks=2)
    assert [small.add(a, b) for a, b in spans[:5]] == [False, False, True, False, True] and small.log[0] == (3.0, "full")
    with pytest.raises(InputError, match="max_chunks"): CoachContext(max_chunks=0)
    with pytest.raises(InputError, match="timeout_s"): CoachContext(timeout_s=0)

def test_rep_counter_counts_every_repetition():
    for seed in (0, 1, 2, 7):
        w = script_workout(seed, SHORT)
        t = np.arange(20)/2
        rc = RepCounter()
        for a in range(0, 20, 3): rc.update(t[a:a + 4], workout_frames(w, t[a:a + 4]))   # overlapping chunks: frames seen twice
        assert rc.reps == len(w.reps), (seed, rc.reps, len(w.reps))

# --- samples, configs, the model

def test_samples_are_the_contexts_and_train_the_actions(data):
    _, train, _ = data
    tok = coach_tokenizer()
    A, E = tok.action_ids, tok.token_id("<|im_end|>")
    for rec in train:
        wins = context_windows(rec)
        assert chunk_frame_counts(rec) == [4]*6 + [2]                                  # 10 s at 2 fps: the last chunk, 9-10 s, holds 2 frames
        assert wins[0][0] == 0 and wins[-1][1] == len(rec.chunks) and all(b == c for (_, b), (c, _) in zip(wins, wins[1:]))
        assert all(not any(c.text for c in rec.chunks[a:b - 1]) for a, b in wins)      # a feedback only ever ends a context
        assert all(b - a <= 4 for a, b in wins)                                         # 6 s of timeout over a 1.5 s stride
        for a, b in wins:
            s = coach_sample(rec, a, b, tok, 6, CoachConfig())
            pairs = [math.ceil(n/2) for n in chunk_frame_counts(rec)[a:b]]
            assert (s.input_ids == tok.token_id("<|video_pad|>")).sum() == 6*sum(pairs)
            lab = s.labels[s.labels != -100].tolist()
            acts = [i for i in lab if i in A.values()]
            assert len(acts) == b - a and lab.count(E) == b - a                          # one action and one <|im_end|> per chunk
            assert [k for k, i in zip(range(a, b), acts) if i != A["<next>"]] == [k for k in range(a, b) if rec.chunks[k].text]
    assert tok.decode(action_turn_ids(tok, "<correct> Great form, keep going")) == "<correct> Great form, keep going ...<|im_end|>\n"

def test_config_files_load_as_one_coach_config():
    s = load_config(ROOT/"configs"/"streaming.yaml", cls=CoachConfig)
    c = load_config(ROOT/"configs"/"coach.yaml", ["stream.context_timeout_s=4"], cls=CoachConfig)
    assert (s.video.chunk_s, s.video.overlap_s, s.stream.context_timeout_s, s.stream.policy) == (2.0, 0.5, 6.0, "action")
    assert (c.workout.n_workouts, c.train.action_weight, c.tokenizer.actions, c.stream.context_timeout_s) == (96, 8.0, True, 4.0)
    assert isinstance(c.train, CoachTrainConfig) and isinstance(s.stream, CoachStreamConfig)
    with pytest.raises(InputError, match="context_timeout_s"): load_config(None, ["stream.context_timeout=3"], cls=CoachConfig)

def test_coach_streams_action_first_and_clears_its_context(data):
    _, _, held = data
    tok = coach_tokenizer()
    model = build_model("tiny", tok, 0)
    chunks = _chunks(held[0], (56, 84))
    cfg = CoachConfig()
    coach = Coach(model, tok, cfg, policy=EveryPolicy(2))
    evs, rows = coach.run(chunks)
    assert [e.end for e in evs] == [c.end for c in chunks][1::2]
    assert [t for t, why in coach.ctx.log if why == "feedback"] == [e.end for e in evs]
    assert all(e.action in ("feedback", "correct") for e in evs) and all(r["context_chunks"] <= 2 for r in rows)
    assert rows[-1]["reps"] == len(held[0].meta["reps"])
    evs2, _ = Coach(model, tok, cfg, policy=EveryPolicy(2)).run(chunks)
    assert [(e.end, e.text) for e in evs2] == [(e.end, e.text) for e in evs]                  # greedy: the same stream twice
    always = Coach(model, tok, replace(cfg, stream=replace(cfg.stream, min_interval_s=3.0)), policy=ThresholdPolicy(0.0))
    assert [e.end for e in always.run(chunks)[0]] == [2.0, 5.0, 8.0]          # min_interval_s on top (the last chunk ends at 10 s: too soon)
    quiet = Coach(model, tok, cfg, policy=ThresholdPolicy(1.01)).run(chunks)
    assert quiet[0] == [] and all(r["context_chunks"] <= 4 for r in quiet[1]) and sum(r["cleared"] for r in quiet[1]) >= 1   # silent: only timeouts clear
    with pytest.raises(InputError, match="model takes"): coach.step(_chunks(held[0])[0])
    with pytest.raises(InputError, match="action tokens"): Coach(model, ByteTokenizer(), cfg)

def test_train_coach_runs_saves_and_loads(data, tmp_path):
    _, train, _ = data
    cfg = CoachConfig()
    cfg = replace(cfg, train=replace(cfg.train, model="tiny", steps=3, batch_size=2))
    run = train_coach(train, cfg)
    assert len(run.losses) == 3 and all(math.isfinite(l) for l in run.losses) and run.n_samples == sum(len(context_windows(r)) for r in train)
    model, tok, c2 = load_coach(save_coach(run, tmp_path/"coach"))
    assert c2 == cfg and tok.action_ids == run.tokenizer.action_ids
    x = mx.array([[1, 2, 3, 4]])
    assert np.allclose(np.array(model(x)), np.array(run.model(x)), atol=1e-6)

# --- svlm demo coach, and the webcam

SVLM = Path(sys.executable).parent/"svlm"
SMALL = ["workout.n_workouts=2", "workout.duration_s=10", "workout.fps=4", "train.model=tiny", "train.steps=3", "train.batch_size=2"]

def _svlm(*args, env=None):
    return subprocess.run([str(SVLM), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)

def test_demo_coach_streams_heldout_workouts_and_scores_the_rules(tmp_path):
    r = _svlm("demo", "coach", "--out", tmp_path/"demo", "--heldout", "2", *SMALL)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for rule in ("| every (", "| random (", "| motion (", "| coach: action |", "| coach: threshold "): assert rule in out
    assert out.count("2. held-out workout ") == 2 and "annotated" in out and "frames/s processed" in out
    s = json.loads(out.strip().splitlines()[-1])
    assert s["heldout"] == 2 and len(s["rule_f1"]) == 3 and len(s["coach_f1"]) == 2 and s["frames_per_second"] > 0
    d = tmp_path/"demo"
    for f in ("heldout_0.jsonl", "heldout_0.vtt", "heldout_1_metrics.jsonl", "scores.json", COACH_MARK, "coach/coach.yaml"): assert (d/f).is_file(), f
    assert len((d/"heldout_1_metrics.jsonl").read_text().splitlines()) == 7                  # one row per chunk of a 10 s workout
    r2 = _svlm("demo", "coach", "--checkpoint", d/"coach", "--out", tmp_path/"again", "--heldout", "1", "workout.n_workouts=2")   # its own settings
    assert r2.returncode == 0, r2.stderr
    assert "loaded the coach" in r2.stdout and json.loads(r2.stdout.strip().splitlines()[-1])["checkpoint"] == str(d/"coach")

def test_vision_targets_label_every_frame_pair_with_its_chunks_action(data):
    "On real samples: each frame pair gets the action token of the chunk it belongs to, as the records say"
    from svlm.coach import coach_samples, RecordFrames
    from svlm.train import collate, vision_targets
    d, train, held = data
    cfg, tok = CoachConfig(), coach_tokenizer()
    m = build_model("tiny", tok, 0); mc = m.config
    ss = coach_samples(train, tok, mc.vision_tokens, cfg)
    rf = RecordFrames(train, (mc.frame_height, mc.frame_width))
    b = collate(ss, rf.sample, tok.token_id("<|endoftext|>"))
    acts = list(tok.action_ids.values())
    lab = mx.array(b.labels)
    got = vision_targets(mx.array(b.input_ids), lab, mc.video_pad_id, mc.vision_tokens, len(b.frames), (lab[..., None] == mx.array(acts)).any(-1)).tolist()
    ref = [tok.token_id(split_action(c.text)[0]) for s in ss for c, pairs in zip(train[s.record].chunks[s.first:s.end], rf(s.record)[s.first:s.end]) for _ in pairs]
    assert got == ref and len(set(ref)) >= 2

def test_trained_coach_beats_every_rule(tmp_path):
    "Issue #18's bar, with the default recipe (CoachConfig(): 96 training workouts, 1000 steps) through the demo: on 8 held-out workouts the coach's F is at least 0.2 above every tuned rule's"
    s = run_coach_demo(tmp_path/"demo", CoachConfig(), n_heldout=8, verbose=False)
    best_rule = max(s["rule_f1"].values())
    assert s["coach_f1"]["coach: action"] >= best_rule + 0.2, s
    assert s["margin"] >= 0.2, s

@pytest.mark.parametrize("args,msg", [
    (["demo", "coach", "--checkpoint", "/nonexistent/coach"], "checkpoint folder not found"),
    (["demo", "coach", "--heldout", "0"], "--heldout must be at least 1"),
    (["demo", "coach", "stream.context_timeout=3"], "did you mean"),
    (["demo", "--webcam"], "belongs to `svlm demo coach`"),
])
def test_demo_coach_bad_input_is_one_line(tmp_path, args, msg):
    r = _svlm(*args, "--out", tmp_path/"x")
    assert r.returncode == 2 and "Traceback" not in r.stderr and msg in r.stderr, r.stderr
    assert not (tmp_path/"x").exists() or not any((tmp_path/"x"/"coach").glob("*"))

def test_demo_coach_webcam_without_a_camera(tmp_path):
    "This machine has no camera: OpenCV missing, or OpenCV present and no camera at the device, is one line and exit code 2, before any training"
    import importlib.util
    r = _svlm("demo", "coach", "--webcam", "--out", tmp_path/"cam")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = [l for l in r.stderr.splitlines() if "error" in l]
    assert len(line) == 1 and ("needs OpenCV" in line[0] if importlib.util.find_spec("cv2") is None else "no camera opens" in line[0]), r.stderr
    assert r.stderr.strip().splitlines()[-1] == line[0] and not (tmp_path/"cam"/"coach").exists()
    stub = tmp_path/"stub"; stub.mkdir()                      # an OpenCV whose cameras never open, as on a machine without one
    (stub/"cv2.py").write_text("class VideoCapture:\n    def __init__(self, i): pass\n    def isOpened(self): return False\n    def release(self): pass\n")
    env = dict(os.environ, PYTHONPATH=f"{stub}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = _svlm("demo", "coach", "--webcam", "3", "--out", tmp_path/"cam2", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "camera 3: no camera opens" in r.stderr, r.stderr
    assert not (tmp_path/"cam2"/"coach").exists()             # nothing was trained

def test_coach_webcam_draws_and_saves_the_feedback(data, tmp_path):
    _, _, held = data
    tok = coach_tokenizer()
    model = build_model("tiny", tok, 0)
    from svlm.video import read_frames
    t, f = read_frames(held[0].video_path, fps=2.0, size=(56, 84))
    cfg = CoachConfig()
    cfg = replace(cfg, stream=replace(cfg.stream, policy="every", every=2))
    s = coach_webcam(model, tok, cfg, out=tmp_path, source=zip(t, f), display=False, log=lambda *a: None)
    assert (s["chunks"], s["events"], s["frames"]) == (7, 3, 20)
    evs = [json.loads(l) for l in (tmp_path/"webcam.jsonl").read_text().splitlines()]
    assert [e["end"] for e in evs] == [3.5, 6.5, 9.5]
    assert read_frames(tmp_path/"webcam.mp4")[1].shape[1:] == (168, 252, 3)
    red = coach_overlay(f[0], Event(0, 2, "Go lower", "feedback"), reps=1)
    assert red.shape == (168, 252, 3) and tuple(red[-2, 3]) == (200, 40, 40) and tuple(coach_overlay(f[0], Event(0, 2, "x", "correct"))[-2, 3]) == (30, 150, 60)
    assert (camera_device("0"), camera_device("rtsp://cam")) == (0, "rtsp://cam")
