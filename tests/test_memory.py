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
