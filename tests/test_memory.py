"Key-frame memory, routers and the OVO-Bench harness: a hand-written OVO-Bench fixture with hand-computed scores (quirks included), bad rows, resumable runs; the memory's bound over 10,000 clips; each router on planted cases; the indexer against cosine on a task cosine cannot do."
import json, math, shutil
from pathlib import Path
import numpy as np
import pytest
import svlm
import mlx.core as mx
from svlm.core import InputError, MemoryConfig, VideoConfig, Config
from svlm.video import write_test_clip
from svlm.model import Model, preset
from svlm.tokenizer import ByteTokenizer
from svlm.memory import (KeyFrameMemory, memory_clips, clip_frames, encode_clip, remember, query_tokens, CoarseRouter, FineRouter,
                         CrossAttnRouter, IndexerRouter, Indexer, train_indexer, pair_accuracy, save_indexer, load_indexer, make_router,
                         route, save_pairs, load_pairs, train_indexer_from_file, parse_tasks, build_prompt, load_ovo, check_row,
                         OvoRowError, ovo_items, item_row, ovo_frames, score_mc, score_count, score_yes_no, score_item, score_results,
                         run_ovo, results_path, read_results, OVO_TASKS)

HERE = Path(__file__).resolve().parent
FIXTURE, BAD = HERE/"ovo_fixture.json", HERE/"ovo_fixture_bad.json"

# ---- the hand-written OVO-Bench fixture: responses and their scores, worked out by hand

RESPONSES = {   # (id, probe): (response, score by OVO-Bench's rules)
    (0, None): ("B", 1),                     # EPM, gt 1 = B
    (1, None): ("a", 0),                     # EPM, gt A: the letter is case-sensitive
    (2, None): ("Clearly A", 1),             # ASI, gt C: the C of "Clearly" is a substring hit
    (3, None): ("D. Unable to answer", 1),   # HLD, gt D
    (4, None): (None, 0),                    # OCR, gt C: no response
    (5, None): ("A", 1),                     # STU, gt A
    (6, 0): ("0", 1), (6, 1): ("one", 0),    # REC counts 0, 1, 2, 3: digits joined; "one" has none
    (6, 2): ("The answer is 2", 1), (6, 3): ("3 or 4", 0),               # "34" is not "3"
    (7, 0): ("N", 1), (7, 1): ("Y", 1), (7, 2): ("yes", 0),              # SSR types 0, 1, 1, 0, 0
    (7, 3): ("Not yet", 1), (7, 4): ("NO", 0),                           # "No" is in "Not yet"; "NO" is not "No"
    (8, 0): ("Y", 0), (8, 1): ("No.", 1), (8, 2): ("Yes", 1), (8, 3): ("Y ", 0),   # CRR types 0, 0, 1, 1; "Y " is not "Y"
}
# per task: EPM 1/2, ASI 1/1, HLD 1/1 | OCR 0/1, STU 1/1 | REC 2/4, SSR 3/5, CRR 2/4
B, R, F = (50 + 100 + 100) / 3, (0 + 100) / 2, (50 + 60 + 50) / 3
TASK_ACC = {"EPM": 50.0, "ASI": 100.0, "HLD": 100.0, "OCR": 0.0, "STU": 100.0, "REC": 50.0, "SSR": 60.0, "CRR": 50.0}

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    "The fixture's five videos: 6 s test clips"
    d = tmp_path_factory.mktemp("videos")
    for v in sorted({r["video"] for r in json.loads(FIXTURE.read_text())}): write_test_clip(d/v, duration=6.0, fps=4, width=64, height=48)
    return d

def answer(calls):
    "The scripted model: RESPONSES, checking that it is shown frames 0..ceil(realtime)-1 at 1 fps"
    def fn(row, frames, prompt):
        ts = [t for t, _ in frames]
        assert ts == [float(i) for i in range(math.ceil(row["realtime"]))], (row["id"], row["realtime"], ts)
        assert prompt == build_prompt(row, row.get("probe"))
        calls.append((row["id"], row.get("probe")))
        return RESPONSES[row["id"], row.get("probe")][0]
    return fn

def test_fixture_loads():
    bench = load_ovo(FIXTURE)
    assert [r["id"] for r in bench.rows] == list(range(9)) and bench.invalid == []
    assert bench.n_calls == 6 + 4 + 5 + 4 == len(RESPONSES)
    assert {c: len(rs) for c, rs in bench.by_category().items()} == {"backward": 4, "realtime": 2, "forward": 3}
    assert [r["id"] for r in load_ovo(FIXTURE, "REC CRR").rows] == [6, 8]
    items = [it for r in bench.rows for it in ovo_items(r)]
    assert [(it.id, it.probe) for it in items] == list(RESPONSES)
    assert [it.truth for it in items[:6]] == ["B", "A", "C", "D", "C", "A"]
    assert [it.truth for it in items if it.task == "SSR"] == [0, 1, 1, 0, 0]
    assert item_row(bench.rows[6], items[8])["realtime"] == 3.5 and item_row(bench.rows[6], items[8])["probe"] == 2

def test_prompts_are_ovo_benchs():
    "Written out here from OVO-Bench's constant.py, independently of the module's templates"
    rows = {r["id"]: r for r in json.loads(FIXTURE.read_text())}
    assert build_prompt(rows[5]) == ("\nQuestion: Where is the ball relative to the goal?\nOptions:\nA. Left of it; B. Inside it;\n\n"
                                     "Respond only with the letter corresponding to your chosen option (e.g., A, B, C). \n"
                                     "Do not include any additional text or explanation in your response.\n")
    assert build_prompt(rows[6], 2) == (
        "\nYou're watching a video in which people may perform a certain type of action repetively. \n"
        "The person performing this kind of action are referred to as 'they' in the following statement.\n"
        "You're task is to count how many times have different people in the video perform this kind of action in total.\n"
        "One complete motion counts as one. \nNow, answer the following question: How many times did they jump over the bar?\n"
        "Provide your answer as a single number (e.g., 0, 1, 2, 3\u2026) indicating the total count.\n"
        "Do not include any additional text or explanation in your response.\n")
    assert build_prompt(rows[7], 3) == (
        "\nYou're watching a tutorial video which contain a sequential of steps. \nThe following is one step from the whole procedures: \n"
        "pour into the pan\nYour task is to determine if the man or woman in the video is currently performing this step.\n"
        "Answer only with \u201cYes\u201d or \u201cNo\u201d.\nDo not include any additional text or explanation in your response.\n")
    assert build_prompt(rows[8], 0) == (
        "\nYou're responsible of answering questions based on the video content. \n"
        "The following question are relevant to the latest frames, i.e. the end of the video.\nWhat does the sign on the door say?\n"
        "Decide whether existing visual content, especially latest frames, i.e. frames that near the end of the video, provide enough "
        "information for answering the question.\nAnswer only with \u201cYes\u201d or \u201cNo\u201d.\n"
        "Do not include any additional text or explanation in your response.\n")
    assert build_prompt(rows[7], 0) != build_prompt(rows[7], 3)              # SSR's prompt follows the probe's step

def test_scorer_quirks_item_by_item():
    bench = load_ovo(FIXTURE)
    for it in (it for r in bench.rows for it in ovo_items(r)):
        response, want = RESPONSES[it.id, it.probe]
        assert score_item(it.task, response, it.truth) == want, (it.id, it.probe, response)
    assert [score_mc(r, "A") for r in ("A", "a", "BA", "(A)", "", None)] == [1, 0, 1, 1, 0, 0]
    assert [score_count(r, 12) for r in ("12", "1 2", "012", "12 13", "twelve", None)] == [1, 1, 0, 0, 0, 0]
    assert score_count("no digits", 0) == 0 and score_count("0", 0) == 1
    assert [score_yes_no(r, 1) for r in ("Y", "Yes", "yes", "YES", "Y.", "y", "Yes!", None)] == [1, 1, 0, 0, 0, 0, 1, 0]
    assert [score_yes_no(r, 0) for r in ("N", "No", "Not sure", "None", "no", "N.", "Yes")] == [1, 1, 1, 1, 0, 0, 0]

def test_bad_rows_are_named_and_collected():
    with pytest.raises(OvoRowError, match=r"row 0 \(id 10, task 'EPM'\): field 'question': missing field"): load_ovo(BAD)
    bench = load_ovo(BAD, skip_invalid=True)
    assert [r["id"] for r in bench.rows] == [17]
    assert [(x["index"], x["id"], x["task"], x["field"]) for x in bench.invalid] == [
        (0, 10, "EPM", "question"), (1, 11, "XYZ", "task"), (2, 12, "HLD", "gt"), (3, 13, "REC", "test_info[0].realtime"),
        (4, 14, "SSR", "test_info[0].type"), (5, 15, "CRR", "test_info"), (6, 16, "OCR", "realtime"), (7, None, "STU", "id"),
        (9, 17, "FPD", "id"), (10, None, None, None), (11, 18, "ACR", "options"), (12, True, "OJR", "id"),
        (13, 19, "REC", "test_info[0].count"), (14, 20, "CRR", "video")]
    assert all(str(BAD) in x["error"] and f"row {x['index']} " in x["error"] for x in bench.invalid)
    assert "repeats the id" in bench.invalid[8]["error"] and "expected an object" in bench.invalid[9]["error"]
    # only the requested tasks are checked; a row of an unknown task, or no object at all, is always reported
    assert [x["index"] for x in load_ovo(BAD, "REC", skip_invalid=True).invalid] == [1, 3, 10, 13]
    with pytest.raises(InputError, match="unknown OVO-Bench task 'REK'"): load_ovo(FIXTURE, "REC REK")
    with pytest.raises(InputError, match="file not found"): load_ovo(HERE/"no_such.json")
    assert check_row(json.loads(FIXTURE.read_text())[7]) is not None

def test_run_scores_the_fixture_by_hand_and_resumes(videos, tmp_path):
    calls = []
    fn = answer(calls)
    def interrupted(row, frames, prompt):
        if len(calls) == 7: raise KeyboardInterrupt
        return fn(row, frames, prompt)
    with pytest.raises(KeyboardInterrupt): run_ovo(FIXTURE, videos, None, tmp_path, interrupted)
    path = results_path(tmp_path, None)
    assert path == tmp_path/"svlm"/f"svlm_{'_'.join(OVO_TASKS)}_offline_1.json"
    saved = read_results(path)                                              # the 7 answers before the interrupt are on disk
    assert [r["response"] for r in saved["backward"] + saved["realtime"]] == ["B", "a", "Clearly A", "D. Unable to answer", None, "A"]
    assert [p.get("response") for p in saved["forward"][0]["test_info"]] == ["0", None, None, None] and "response" not in saved["forward"][0]["test_info"][1]
    calls.clear()
    run = run_ovo(FIXTURE, videos, None, tmp_path, fn)
    assert run["answered"] == len(calls) == len(RESPONSES) - 7                # only what was missing is asked
    assert calls == list(RESPONSES)[7:]
    s = run["scores"]
    assert {t: v["accuracy"] for t, v in s["tasks"].items()} == pytest.approx(TASK_ACC)
    assert (s["backward"], s["realtime"], s["forward"]) == pytest.approx((B, R, F))
    assert s["total"] == pytest.approx(560 / 9) and s["total"] == pytest.approx((B + R + F) / 3)
    assert s["total_br"] == pytest.approx(200 / 3) and s["task_mean"] == pytest.approx(63.75)
    assert (s["n_scored"], s["n_unanswered"], s["n_invalid"]) == (19, 0, 0)
    # OVO-Bench's layout, each item with its score
    res = json.loads(path.read_text())
    assert list(res) == ["backward", "realtime", "forward", "invalid"]
    assert list(res["backward"][0]) == ["id", "video", "task", "question", "response", "ground_truth", "score"]
    assert [r["ground_truth"] for r in res["backward"]] == ["B", "A", "C", "D"] and [r["score"] for r in res["backward"]] == [1, 0, 1, 1]
    rec = res["forward"][0]
    assert {k: v for k, v in rec.items() if k != "test_info"} == {k: v for k, v in json.loads(FIXTURE.read_text())[6].items() if k != "test_info"}
    assert [(p["count"], p["response"], p["score"]) for p in rec["test_info"]] == [(0, "0", 1), (1, "one", 0), (2, "The answer is 2", 1), (3, "3 or 4", 0)]
    assert json.loads(Path(run["scores_path"]).read_text())["total"] == pytest.approx(560 / 9)
    # a third run has nothing to ask; scoring alone needs neither annotations nor videos
    calls.clear()
    assert run_ovo(FIXTURE, videos, None, tmp_path, fn)["answered"] == 0 and calls == []
    again = run_ovo(None, None, None, tmp_path, score_only=True)["scores"]
    assert again["tasks"] == s["tasks"] and again["total"] == s["total"]

def test_run_with_bad_videos(videos, tmp_path):
    rows = json.loads(FIXTURE.read_text())
    rows[4]["video"] = "missing/none.mp4"                                   # OCR: no such file
    rows[5]["realtime"] = 9.5                                               # STU: its 6 s video is too short
    anno = tmp_path/"anno.json"; anno.write_text(json.dumps(rows))
    with pytest.raises(OvoRowError, match=r"row 4 \(id 4, task 'OCR'\): field 'video': video not found"):
        run_ovo(anno, videos, None, tmp_path/"r1", answer([]))
    kept = read_results(results_path(tmp_path/"r1", None))                 # what was answered before the bad row is kept
    assert [r["id"] for r in kept["backward"]] == [0, 1, 2, 3] and kept["realtime"] == []
    run = run_ovo(anno, videos, None, tmp_path/"r2", answer([]), skip_invalid=True)
    assert [(x["index"], x["id"], x["task"], x["field"]) for x in run["invalid"]] == [(4, 4, "OCR", "video"), (5, 5, "STU", "realtime")]
    assert "shorter than realtime 9.5 s" in run["invalid"][1]["error"]
    s = run["scores"]
    assert (s["n_invalid"], s["realtime"], s["total"], s["total_br"], s["n_scored"]) == (2, None, None, None, 17)
    assert s["backward"] == pytest.approx(B) and s["forward"] == pytest.approx(F)
    # invalid rows in the file itself are skipped and counted too
    run = run_ovo(BAD, videos, "ATR", tmp_path/"r3", lambda row, frames, prompt: "A", skip_invalid=True)
    assert [(x["index"], x["task"], x["field"]) for x in run["invalid"]] == [(1, "XYZ", "task"), (10, None, None), (8, "ATR", "video")]
    assert run["scores"]["n_invalid"] == 3 and run["scores"]["n_scored"] == 0 and run["answered"] == 0

def test_run_modes(videos, tmp_path):
    with pytest.raises(InputError, match="exclude each other"): run_ovo(FIXTURE, videos, "EPM", tmp_path, answer([]), inference_only=True, score_only=True)
    with pytest.raises(InputError, match="no results to score"): run_ovo(FIXTURE, videos, "EPM", tmp_path, score_only=True)
    with pytest.raises(InputError, match="needs an answer function"): run_ovo(FIXTURE, videos, "EPM", tmp_path)
    run = run_ovo(FIXTURE, videos, "EPM HLD", tmp_path, answer([]), inference_only=True)
    assert run["scores"] is None and Path(run["results_path"]).name == "svlm_EPM_HLD_offline_1.json"
    assert not list(Path(run["results_path"]).parent.glob("*_scores.json"))
    s = run_ovo(FIXTURE, videos, "EPM HLD", tmp_path, score_only=True)["scores"]
    assert {t: v["accuracy"] for t, v in s["tasks"].items()} == {"EPM": 50.0, "HLD": 100.0} and s["backward"] == 75.0

def test_ovo_frames(videos):
    row = json.loads(FIXTURE.read_text())[0]
    assert [t for t, _ in ovo_frames(row, videos, fps=2.0)] == [i / 2 for i in range(8)]   # [0, ceil(3.2) = 4) at 2 fps
    assert len(list(ovo_frames({**row, "realtime": 6.4}, videos))) == 6     # within 1 s of the end: clipped to the video
    with pytest.raises(OvoRowError, match="shorter than realtime 7.5 s"): ovo_frames({**row, "realtime": 7.5}, videos)
    with pytest.raises(OvoRowError, match="missing field"): ovo_frames({k: v for k, v in row.items() if k != "realtime"}, videos)

# ---- memory

def test_memory_stays_within_its_bound_over_10000_clips():
    rng = np.random.default_rng(0)
    m = KeyFrameMemory.from_config(MemoryConfig())
    nbytes = None
    for i in range(10_000):
        m.add(rng.standard_normal((8, 32)).astype(np.float32), 4 * i, 4 * i + 4)
        assert len(m) <= 5
        nbytes = nbytes or m.nbytes
        assert m.nbytes == nbytes
    assert (len(m), sum(m.counts), m.clips) == (5, 10_000, 10_000) and m.merges > 9_000   # random directions rarely join: nearly every clip forces a merge
    assert m.spans[0][0] == 0 and max(b for _, b in m.spans) == 40_000
    assert [a for a, _ in m.spans] == sorted(a for a, _ in m.spans)
    same = KeyFrameMemory(5, 0.5)
    x = rng.standard_normal((8, 32)).astype(np.float32)
    for i in range(10_000): same.add(x + 0.01 * rng.standard_normal(x.shape).astype(np.float32), i, i + 1)
    assert (len(same), same.counts, same.spans) == (1, [10_000], [(0.0, 10_000.0)])
    assert np.allclose(same.tokens[0], x, atol=1e-3)

def test_memory_join_new_merge_by_hand(tmp_path):
    m = KeyFrameMemory(2, 0.5)
    assert [m.add(np.array(v, np.float32), i, i + 1) for i, v in enumerate([[1, 0], [1, 1], [0, 1], [-1, 0], [0, 1]])] == [0, 0, 1, 1, 0]
    # [1,1] joins [1,0] (cos .71); [0,1] is new (cos .45 with [1,.5]); [-1,0] is new and the first two merge into [2/3, 2/3];
    # the last [0,1] has cos .71 with [2/3, 2/3] and joins it: (3·[2/3, 2/3] + [0, 1])/4 = [.5, .75]
    assert np.allclose(m.pooled, [[0.5, 0.75], [-1, 0]]) and m.counts == [4, 1] and m.spans == [(0.0, 5.0), (3.0, 4.0)]
    back = KeyFrameMemory.load(m.save(tmp_path/"m.safetensors"))
    assert back.state_dict()["spans"] == m.state_dict()["spans"] and np.array_equal(back.tokens, m.tokens)
    assert (back.size, back.match_ratio, back.clips, back.merges) == (2, 0.5, 5, 1)
    with pytest.raises(InputError, match="every clip needs the same"): m.add(np.zeros((2, 2)), 5, 6)
    with pytest.raises(InputError, match="key_frame_buffer_size"): KeyFrameMemory(0)
    (tmp_path/"x.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="x.safetensors"): KeyFrameMemory.load(tmp_path/"x.safetensors")
    save_indexer(Indexer(4), tmp_path/"ix.safetensors")
    with pytest.raises(InputError, match="not a key-frame memory file"): KeyFrameMemory.load(tmp_path/"ix.safetensors")

def test_clips_through_the_toy_encoder():
    tok = ByteTokenizer()
    mx.random.seed(0)
    toy = Model(preset("tiny", vocab_size=tok.vocab_size, video_pad_id=tok.token_id("<|video_pad|>")))
    rng = np.random.default_rng(0)
    stream = [(i / 2, rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)) for i in range(19)]   # 9.5 s at 2 fps
    clips = list(memory_clips(stream, MemoryConfig(clip_len=4.0, sample_fps=1.0)))
    assert [(c.start, c.end, c.times.tolist()) for c in clips] == [(0, 4, [0, 1, 2, 3]), (4, 8, [4, 5, 6, 7]), (8, 12, [8, 9])]
    tokens, pooled = encode_clip(toy, clips[2].frames, clip_frames(MemoryConfig()))
    assert tokens.shape == (12, 64) and np.allclose(np.array(pooled), np.array(tokens).mean(0), atol=1e-6)
    m = remember(KeyFrameMemory(5, 2.0), toy, stream, Config())
    assert (len(m), m.spans[-1]) == (3, (8.0, 12.0))
    q = query_tokens(toy, tok, "Who scored?")
    assert q.shape == (11, 64) and all(len(r.route(m, q, 2)) == 2 for r in (CoarseRouter(), FineRouter(), CrossAttnRouter()))

# ---- routers

def planted(seed=3, decoy=True):
    "8 key frames; frame 5 holds the question's tokens among others; frame 2 (a decoy) is all the question's mean"
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((4, 32)).astype(np.float32)
    m = KeyFrameMemory(8, 2.0)
    for k in range(8):
        t = rng.standard_normal((6, 32)).astype(np.float32)
        if k == 5: t[:4] = q + 0.1 * rng.standard_normal((4, 32))
        if k == 2 and decoy: t[:] = q.mean(0)
        m.add(t, 4 * k, 4 * k + 4)
    return m, q

@pytest.mark.parametrize("seed", range(5))
def test_each_router_ranks_the_planted_key_frame_first(seed):
    m, q = planted(seed, decoy=False)
    for r in (CoarseRouter(), FineRouter(), CrossAttnRouter()): assert r.route(m, q, 3)[0] == 5, (seed, r)
    m, q = planted(seed, decoy=True)                          # global pooling falls for the decoy, token-wise routers do not
    assert CoarseRouter().route(m, q, 1) == [2]
    assert FineRouter().route(m, q, 1) == [5] and CrossAttnRouter().route(m, q, 1) == [5]
    assert route(m, q, "cos_sim_fine", topk=2) == [5, 2] and route(m, q, MemoryConfig(router_strategy="cross-attn", topk=1)) == [5]

def test_route_edges():
    m, q = planted()
    assert len(CoarseRouter().route(m, q, 100)) == 8 and sorted(FineRouter().route(m, q, 8)) == list(range(8))
    assert CoarseRouter().route(KeyFrameMemory(), q) == []
    with pytest.raises(InputError, match="memory.topk"): CoarseRouter().route(m, q, 0)
    with pytest.raises(InputError, match="do not fit key frames of width 32"): CoarseRouter().route(m, np.zeros((2, 8)))
    with pytest.raises(InputError, match="unknown router"): make_router("bm25")
    with pytest.raises(InputError, match="needs trained weights"): route(m, q, "indexer")

def linked(n, A, rng, noise=0.1):
    Q = rng.standard_normal((n, A.shape[0])).astype(np.float32)
    return Q, (Q @ A.T + noise * rng.standard_normal(Q.shape)).astype(np.float32)

def test_indexer_learns_what_cosine_cannot(tmp_path):
    "Key frames are a fixed random rotation of their questions: cosine is at chance, the learned projections are not"
    rng = np.random.default_rng(1)
    A = np.linalg.qr(rng.standard_normal((32, 32)))[0].astype(np.float32)
    Qtr, Ktr = linked(1500, A, rng)
    Qte, Kte = linked(200, A, rng)
    ix, losses = train_indexer((Qtr, Ktr), steps=250, batch_size=64, seed=0)
    assert np.mean(losses[-20:]) < 0.25 * np.mean(losses[:20]), (losses[:3], losses[-3:])
    coarse, learned = pair_accuracy(Qte, Kte), pair_accuracy(Qte, Kte, ix)
    assert coarse < 0.05 and learned > 0.9, (coarse, learned)
    assert pair_accuracy(Qte, Kte, Indexer(32)) == coarse                    # untrained (identity) it is cosine
    # as a router over memories of 10 held-out key frames: its own key frame first
    hits = {"coarse": 0, "indexer": 0}
    ixr = make_router("indexer", save_indexer(ix, tmp_path/"ix.safetensors"))
    for s in range(0, 200, 10):
        m = KeyFrameMemory(10, 2.0)
        for i in range(10): m.add(Kte[s + i][None], i, i + 1)
        for i in range(10):
            hits["coarse"] += CoarseRouter().route(m, Qte[s + i][None], 1) == [i]
            hits["indexer"] += ixr.route(m, Qte[s + i][None], 1) == [i]
    assert hits["indexer"] >= 190 and hits["indexer"] > hits["coarse"] + 100, hits
    back = load_indexer(tmp_path/"ix.safetensors")
    assert np.array_equal(np.array(back(mx.array(Qte), mx.array(Kte))), np.array(ix(mx.array(Qte), mx.array(Kte))))
    # pairs may also be an iterable of (question tokens, key-frame tokens), mean-pooled
    ix2, l2 = train_indexer([(np.stack([q, q]), k[None]) for q, k in zip(Qtr[:200], Ktr[:200])], steps=5)
    assert len(l2) == 5 and ix2.dim == 32
    with pytest.raises(InputError, match="at least 2 pairs"): train_indexer((Qtr[:1], Ktr[:1]))

def test_train_indexer_from_file(tmp_path):
    rng = np.random.default_rng(2)
    A = np.linalg.qr(rng.standard_normal((16, 16)))[0].astype(np.float32)
    Q, K = linked(500, A, rng)
    rep = train_indexer_from_file(save_pairs(tmp_path/"pairs.safetensors", Q, K), tmp_path/"ix.safetensors", heldout=0.2, steps=150)
    assert (rep["n_train"], rep["n_heldout"]) == (400, 100) and rep["loss_last"] < rep["loss_first"]
    assert rep["heldout_acc"] > 0.8 and rep["heldout_acc_coarse"] < 0.1, rep
    assert load_indexer(rep["path"]).dim == 16
    np.savez(tmp_path/"pairs.npz", questions=Q, key_frames=K)
    assert load_pairs(tmp_path/"pairs.npz")[0].shape == (500, 16)
    np.savez(tmp_path/"bad.npz", questions=Q)
    with pytest.raises(InputError, match="no array 'key_frames'"): load_pairs(tmp_path/"bad.npz")


# ---- questions over a live stream (MemoryEngine), the synthetic OVO-style benchmark

from svlm.core import CacheConfig, SamplingConfig, SynthConfig
from svlm.synth import script_clip, SPLIT_SEED
from svlm.generate import generate
from svlm.memory import (MemoryEngine, SilentPolicy, question_turn_ids, ovo_answer_fn, run_ovo_live, synth_ovo_rows, make_synth_ovo,
                         held_times, describe_event, ovo_clip, ovo_frames, empty_results, ovo_items, UNABLE)
from svlm.memory import _Clips, _record

ECFG = Config(cache=CacheConfig(vision_rounds=3, previous_sink_tokens=8, previous_window_tokens=16),
              memory=MemoryConfig(topk=2, key_frame_match_ratio=0.9), sampling=SamplingConfig(temperature=0.0, max_new_tokens=6))


def toy_model(seed=0):
    tok = ByteTokenizer()
    mx.random.seed(seed)
    return Model(preset("tiny", vocab_size=tok.vocab_size, video_pad_id=tok.token_id("<|video_pad|>"))), tok


def scene_stream(seconds=24, fps=2):
    "Still scenes, one per 4 s clip in the order 0 0 1 1 2 2 ...: the memory holds one key frame per scene"
    rng = np.random.default_rng(1)
    scenes = [rng.integers(0, 255, (56, 84, 3), dtype=np.uint8), np.full((56, 84, 3), 200, np.uint8),
              np.tile(np.linspace(0, 255, 84).astype(np.uint8)[None, :, None], (56, 1, 3)), np.zeros((56, 84, 3), np.uint8)]
    return [(i / fps, scenes[(i // (8 * fps)) % 4]) for i in range(seconds * fps)]


def test_clips_are_cut_as_chunks_pass():
    pairs = scene_stream(10)
    cb, got = _Clips(MemoryConfig()), []
    for k in range(10): got += cb.push([t for t, _ in pairs[2 * k:2 * k + 2]], [f for _, f in pairs[2 * k:2 * k + 2]])
    whole = list(memory_clips(pairs, MemoryConfig(), end=10.0))
    assert [(c.start, c.end, c.times.tolist()) for c in got] == [(c.start, c.end, c.times.tolist()) for c in whole[:2]]
    assert cb.push([1.0, 9.0], [pairs[0][1]] * 2) == []          # a repeated (older) frame is dropped; clip 8-12 is still open


def test_question_context_layout_and_answer():
    toy, tok = toy_model()
    eng = MemoryEngine(toy, tok, ECFG)
    eng.run(scene_stream(24))
    assert eng.memory.spans == [(0.0, 8.0), (8.0, 16.0), (16.0, 24.0)] and sorted(eng.seen) == [21, 22, 23]
    cache, ids, kfs, window = eng.context("Which team scored first?")
    text = tok.decode(cache.kept_ids() + ids)
    assert text.count("Time=") == 6                                    # 2 key frames + 3 window rounds + the question
    stamps = [text.index(k.time_text + "<|vision_start|>") for k in kfs] + [text.index(f"Time={r.t0:.1f}-{r.t1:.1f}s<|vision_start|>") for r in window]
    assert stamps == sorted(stamps) and text.endswith("<|im_start|>user\nTime=24.0s Which team scored first?<|im_end|>\n<|im_start|>assistant\n\n")
    assert ids[-len(question_turn_ids(tok, 24.0, "Which team scored first?")):] == question_turn_ids(tok, 24.0, "Which team scored first?")
    # the answer is what one prefill of the whole context, greedy, generates
    all_ids = cache.kept_ids() + ids
    feats = mx.concatenate([mx.array(k.tokens) for k in kfs] + [r.feats for r in window])
    ref = generate(toy, tok, all_ids, input_embeddings=toy.embed_with_vision(mx.array([all_ids]), feats)[0], config=ECFG.sampling)
    pieces = []
    a = eng.ask("Which team scored first?", on_text=pieces.append)
    assert a.tokens == ref.tokens and a.key_frames == [(k.t0, k.t1) for k in kfs] and a.context_tokens == len(all_ids)
    assert "".join(pieces) == ref.text
    w = eng.ask("Which team scored first?", topk=0)
    assert w.key_frames == [] and len(w.window) == 3 and w.context_tokens < a.context_tokens


def test_asking_does_not_disturb_the_stream():
    toy, tok = toy_model()
    eng, twin = MemoryEngine(toy, tok, ECFG), MemoryEngine(toy, tok, ECFG)
    eng.run(scene_stream(12)); twin.run(scene_stream(12))
    eng.ask("Who has the ball?")
    more = [(12 + t, f) for t, f in scene_stream(4)]
    assert [r["tokens"] for r in eng.run(more).metrics] == [r["tokens"] for r in twin.run(more).metrics]
    assert eng.cache.kept_ids() == twin.cache.kept_ids() and eng.memory.spans == twin.memory.spans


def test_memory_engine_bad_input():
    toy, tok = toy_model()
    with pytest.raises(InputError, match="cache.mode"): MemoryEngine(toy, tok, Config(cache=CacheConfig(mode="sink")))
    eng = MemoryEngine(toy, tok, ECFG)
    with pytest.raises(InputError, match="the question is empty"): eng.ask(" ")


def test_memory_engine_on_tiny_qwen25vl():
    "Key frames as two-patch videos; the context's 3-D positions are get_rope_index's; the first answer token is a fresh prefill's argmax"
    from svlm.tokenizer import load_tokenizer
    from svlm.vision import VisionConfig
    from svlm.qwen25vl import Qwen25VL, Qwen25VLConfig
    qtk = load_tokenizer("qwen")
    vc = VisionConfig.from_dict(dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=32, fullatt_block_indexes=[0],
                                     tokens_per_second=2, spatial_merge_size=2, patch_size=14, temporal_patch_size=2, window_size=112))
    mx.random.seed(0)
    vl = Qwen25VL(Qwen25VLConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                 vocab_size=151680, vision=vc, mrope_section=(2, 1, 1), rope_theta=100.0, tie_word_embeddings=True))
    cfg = Config(cache=CacheConfig(vision_rounds=2, previous_sink_tokens=8, previous_window_tokens=16),
                 video=VideoConfig(min_pixels=56 * 56, max_pixels=56 * 56), memory=MemoryConfig(topk=2, key_frame_match_ratio=0.99),
                 sampling=SamplingConfig(temperature=0.0, max_new_tokens=3))
    eng = MemoryEngine(vl, qtk, cfg, policy=SilentPolicy())
    rng = np.random.default_rng(0)
    eng.run([(i / 2, rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for i in range(24)])
    a = eng.ask("Which team scored first?")
    cache, ids, kfs, window = eng.context("Which team scored first?")
    kept = cache.kept_ids() + ids
    assert eng.clip_grid == [2, 4, 4] and len(kfs) == min(2, len(eng.memory)) >= 1 and [r.grid for r in window] == [[1, 4, 4]] * 2
    spans = [(eng.clip_grid, 2.0)] * len(kfs) + [(r.grid, r.spg) for r in window]
    pos, _ = vl.config.rope_index(np.array([kept]), None, [g for g, _ in spans], [s for _, s in spans])
    np.testing.assert_allclose(np.array(cache.slot_positions(0, len(kept))), np.array(pos), atol=1e-5)
    feats = mx.concatenate([mx.array(k.tokens) for k in kfs] + [r.feats for r in window])
    logits = vl(mx.array([kept]), pos, None, vl.embed_with_vision(mx.array([kept]), feats))[0, -1]
    assert a.tokens[0] == int(mx.argmax(logits).item())


def test_synthetic_benchmark_by_hand():
    "Held-out clip 1: Red pass 4 s, Red throw-in 9 s, Blue pass 14 s, Blue goal (shown 19 s, in at 21 s), Red pass 26 s"
    ev = script_clip(SPLIT_SEED["heldout"] + 1)
    assert [(e.t, e.kind, e.team) for e in ev] == [(4.0, "pass", "Red"), (9.0, "out", "Red"), (14.0, "pass", "Blue"), (19.0, "goal", "Blue"), (26.0, "pass", "Red")]
    assert [describe_event(e) for e in ev[1:4:2]] == ["Red put the ball out for a throw-in", "Blue scored"]
    assert held_times(ev, 30.0) == [(2, "Red"), (3, "Red"), (8, "Red"), (13, "Blue"), (18, "Blue"), (25, "Red")]
    rows = synth_ovo_rows(SPLIT_SEED["heldout"] + 1, "videos/heldout_001.mp4")
    assert rows == synth_ovo_rows(SPLIT_SEED["heldout"] + 1, "videos/heldout_001.mp4")
    by = {}
    for r in rows: by.setdefault(r["task"], []).append(r)
    assert sorted(by) == ["ASI", "CRR", "EPM", "OJR", "REC"]
    epm = by["EPM"][0]
    assert (epm["options"][epm["gt"]], sorted(epm["options"]), epm["realtime"]) == ("Blue", ["Blue", "Red", UNABLE], 30.0)
    asi = by["ASI"][0]
    assert asi["options"][asi["gt"]] == "Red put the ball out for a throw-in"
    assert all(dict(held_times(ev, 30.0))[int(r["realtime"])] == r["options"][r["gt"]] for r in by["OJR"])
    assert [p["count"] for p in by["REC"][0]["test_info"]] == [0, 0, 0, 1, 1]
    assert [(p["realtime"], p["type"]) for p in by["CRR"][0]["test_info"]] == [(16.0, 0), (20.0, 0), (23.0, 1), (27.0, 1), (30.0, 1)]


def test_synthetic_benchmark_loads_and_an_oracle_scores_100(tmp_path):
    path = make_synth_ovo(tmp_path, 12, videos=False)
    bench = load_ovo(path)
    assert bench.invalid == [] and {"EPM", "HLD", "ASI", "OJR", "REC", "CRR"} <= {r["task"] for r in bench.rows}
    assert path.stat().st_size < 200_000
    res, done = empty_results(), {}
    for row in bench.rows:
        for it in ovo_items(row):
            _record(res, done, row, it, str(it.truth) if row["task"] == "REC" else ("Yes" if it.truth else "No") if row["task"] == "CRR" else it.truth)
    s = score_results(res)
    assert all(v["accuracy"] == 100.0 for v in s["tasks"].values()) and s["total"] == 100.0
    hld = [r for r in bench.rows if r["task"] == "HLD"]
    assert all(r["options"][r["gt"]] == UNABLE and not any(e.kind == "goal" for e in script_clip(SPLIT_SEED["heldout"] + int(r["id"][8:11]))) for r in hld)
    with pytest.raises(InputError, match="unknown split"): make_synth_ovo(tmp_path, 1, split="test")


def test_ovo_with_the_engine_offline_live_and_pre_cut(tmp_path):
    "run_ovo with ovo_answer_fn, run_ovo_live, and pre-cut clips: the same items see the same frames and get the same answers"
    toy, tok = toy_model()
    cfg = SynthConfig(duration=8, width=84, height=56, n_clips=1)
    path = make_synth_ovo(tmp_path/"b", 1, cfg=cfg)
    eng = MemoryEngine(toy, tok, Config(memory=MemoryConfig(topk=2), cache=CacheConfig(vision_rounds=2),
                                        sampling=SamplingConfig(temperature=0.0, max_new_tokens=3)), policy=SilentPolicy())
    fn = ovo_answer_fn(eng)
    off = run_ovo(path, tmp_path/"b", None, tmp_path/"r", fn, **fn.run_kw)
    live, answers = run_ovo_live(eng, path, tmp_path/"b")
    flat = lambda res: [r["response"] for c in ("backward", "realtime") for r in res[c]] + [p["response"] for r in res["forward"] for p in r["test_info"]]
    assert flat(live) == flat(read_results(off["results_path"])) and len(answers) == load_ovo(path).n_calls
    assert score_results(live)["tasks"] == off["scores"]["tasks"]
    # OVO-Bench's chunked_videos layout: {id}.mp4 and {id}_{i}.mp4, cut at ceil(realtime)
    from svlm.video import FileSource
    from svlm.synth import write_mp4
    cut = tmp_path/"chunked"; cut.mkdir()
    bench = load_ovo(path)
    src = [f for _, f in FileSource(tmp_path/"b"/bench.rows[0]["video"], fps=10)]
    for row in bench.rows:
        for it in ovo_items(row):
            name = f"{row['id']}.mp4" if it.probe is None else f"{row['id']}_{it.probe}.mp4"
            write_mp4(cut/name, src[:10 * math.ceil(it.realtime)], 10, 84, 56)
    pre = run_ovo(path, None, None, tmp_path/"r2", fn, chunked_dir=cut, **fn.run_kw)
    assert pre["scores"]["tasks"] == off["scores"]["tasks"]
    (cut/f"{bench.rows[0]['id']}.mp4").unlink()
    bad = run_ovo(path, None, None, tmp_path/"r3", fn, chunked_dir=cut, skip_invalid=True, **fn.run_kw)
    assert [x["id"] for x in bad["invalid"]] == [bench.rows[0]["id"]] and "pre-cut clip not found" in bad["invalid"][0]["error"]


# --- training on questions and commentary (qa_layout, qa_samples, train_qa) ---
from svlm.core import TrainConfig
from svlm.synth import TEAMS
from svlm.video import FileSource
from svlm.train import load as load_run
from svlm.memory import (qa_layout, qa_samples, qa_answer, train_qa, QASample, stream_items, ask_moment, MC_TASKS)

QCFG = Config(synth=SynthConfig(n_clips=1, duration=12.0, width=84, height=56, captions=True),
              cache=CacheConfig(vision_rounds=2, previous_sink_tokens=8, previous_window_tokens=16),
              memory=MemoryConfig(topk=2, key_frame_buffer_size=3, key_frame_match_ratio=0.999),
              train=TrainConfig(window_s=3.0, stride_s=3.0, batch_size=2, lr=3e-3, warmup=2, lr_min=3e-4, compile=False))


def _layout_of(eng, q, topk):
    kfs = eng.routed(q, topk)
    return qa_layout(eng.tok, eng.cfg, eng.previous_text(), [(k.t0, k.t1, len(k.tokens)) for k in kfs],
                     [(r.t0, r.t1, r.feats.shape[0], r.reply, r.query) for r in [eng.seen[i] for i in sorted(eng.seen)]], eng.t, q)


@pytest.mark.parametrize("topk", [0, 1, 2])
def test_qa_layout_is_the_engines_context(topk):
    toy, tok = toy_model()
    eng = MemoryEngine(toy, tok, ECFG)                                # commentating: previous text and spoken replies in the window
    eng.run(scene_stream(24))
    assert eng.previous_text() and any(r.reply != eng.sil for r in eng.seen.values())
    cache, ids, kfs, window = eng.context("Which team scored first?", topk)
    assert _layout_of(eng, "Which team scored first?", topk) == cache.kept_ids() + ids
    assert len(kfs) == min(topk, len(eng.memory))


@pytest.fixture(scope="module")
def qa_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    toy, tok = toy_model()
    return d, toy, tok, qa_samples(toy, tok, QCFG, d, n_clips=1, topk=2, n_orders=2)


def test_qa_sample_labels_are_exactly_the_answer(qa_clip):
    d, toy, tok, qa = qa_clip
    E, VP = tok.token_id("<|im_end|>"), tok.token_id("<|video_pad|>")
    rows = {r["id"]: r for r in synth_ovo_rows(SPLIT_SEED["train"], "videos/train_000.mp4", QCFG.synth)}
    assert {s.task for s in qa} == {r["task"] for r in rows.values()}
    for s in qa:
        lab = np.flatnonzero(s.labels != -100)
        assert lab.tolist() == list(range(len(s) - len(lab), len(s)))           # a suffix: the answer, then <|im_end|>
        assert (s.labels[lab] == s.input_ids[lab]).all() and s.input_ids[-1] == E
        answer = tok.decode(s.input_ids[lab][:-1].tolist())
        assert tok.encode(answer) + [E] == s.input_ids[lab].tolist()
        assert int((s.input_ids == VP).sum()) == len(s.vision)
        row = rows[s.id.rsplit("_", 1)[0] if s.task in ("REC", "CRR") else s.id]
        prompt = tok.decode(s.input_ids[:lab[0]].tolist())
        if s.task in MC_TASKS:                                           # the letter names the true option in this ordering
            assert f"{answer}. {row['options'][row['gt']]};" in prompt
        elif s.task == "REC": assert answer == str(row["test_info"][int(s.id.rsplit("_", 1)[1])]["count"])
        else: assert answer == ("Yes" if row["test_info"][int(s.id.rsplit("_", 1)[1])]["type"] else "No")
    mc = [s for s in qa if s.task in ("EPM", "HLD")]
    assert len(mc) == 2                                                  # both orderings of the two teams


def test_qa_samples_are_the_context_asked_at_their_moment(qa_clip):
    d, toy, tok, qa = qa_clip
    eng = MemoryEngine(toy, tok, QCFG, policy=SilentPolicy())
    v, s0 = QCFG.video, qa[0]
    src = FileSource(d/"videos/train_000.mp4", fps=v.fps, size=eng.size, cfg=v)
    lab = np.flatnonzero(s0.labels != -100)
    question = tok.decode(s0.input_ids.tolist()).split(f"Time={s0.t:.1f}s ", 1)[1].split("<|im_end|>")[0]
    for _ in stream_items(eng, src, [(s0.t,)]): pass
    cache, ids, kfs, window = eng.context(question, 2)
    assert s0.input_ids[:lab[0]].tolist() == cache.kept_ids() + ids
    feats = np.concatenate([k.tokens for k in kfs] + [np.array(r.feats) for r in window])
    np.testing.assert_allclose(s0.vision, feats, atol=1e-6)


def test_qa_samples_refuse_held_out_seeds(tmp_path):
    toy, tok = toy_model()
    with pytest.raises(InputError, match="training split"): qa_samples(toy, tok, QCFG, tmp_path, n_clips=2, first=SPLIT_SEED["heldout"] - 1)
    with pytest.raises(InputError, match="no question samples"): train_qa(QCFG, [], (toy, tok), tmp_path/"run")


def test_train_qa_loss_falls(qa_clip, tmp_path):
    d, toy, tok, qa = qa_clip
    toy2, _ = toy_model(1)
    res = train_qa(QCFG, qa, (toy2, tok), tmp_path/"run", steps=40)
    assert len(res.losses) == len(res.kinds) == 40 and set(res.kinds) == {"qa", "commentary"}
    for kind in ("qa", "commentary"):
        ls = [l for l, k in zip(res.losses, res.kinds) if k == kind]
        assert np.mean(ls[len(ls) // 2:]) < np.mean(ls[:len(ls) // 2]), kind
    model, tok2, cfg = load_run(tmp_path/"run")
    assert cfg.memory.key_frame_buffer_size == 3 and cfg.train.steps == 40
