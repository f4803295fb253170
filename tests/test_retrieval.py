"""The retrieval protocol: CLIP4Clip's metrics on hand-computed rankings, the caption readers on each source's
layout, and the whole protocol against an independent computation with open_clip on random weights."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

import clip_model
from clip_model.errors import UserError
from configs.schema import ConfigError, load_config
from datasets.captions import read_activitynet, read_captions, read_didemo, read_msrvtt
from helpers import open_clip_model, ours_from_open_clip, run_retrieval, t2v_ranks
from pipeline.eval.retrieval import retrieval_metrics, text_to_video_ranks, video_to_text_ranks


def _clip4clip_compute_metrics(x: np.ndarray) -> dict[str, float]:
    """CLIP4Clip's ``metrics.compute_metrics`` as published (rows: queries, the match on the diagonal)."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    return {"R1": float(np.sum(ind == 0)) * 100 / len(ind), "R5": float(np.sum(ind < 5)) * 100 / len(ind),
            "R10": float(np.sum(ind < 10)) * 100 / len(ind), "MR": np.median(ind) + 1, "MeanR": np.mean(ind) + 1}


def test_ranks_and_metrics_equal_a_hand_computed_ranking():
    # 3 videos (rows) x 4 captions (columns); captions 0 and 1 describe video 0, caption 2 video 1, caption 3 video 2
    sim = np.array([[0.9, 0.1, 0.5, 0.2],
                    [0.3, 0.6, 0.5, 0.7],
                    [0.8, 0.2, 0.1, 0.4]])
    owners = np.array([0, 0, 1, 2])
    # caption 0: video 0 best (rank 1); caption 1: videos 1 (0.6) and 2 (0.2) above video 0 (0.1): rank 3;
    # caption 2: videos 0 and 1 tie at 0.5: rank 1 (1 + the number strictly higher); caption 3: only 0.7 above 0.4
    np.testing.assert_array_equal(text_to_video_ranks(sim, owners), [1, 3, 1, 2])
    # video -> text by each group's best caption: video 0: groups (0.9, 0.5, 0.2) -> 1; video 1: (0.6, 0.5, 0.7) ->
    # its group (0.5) is third; video 2: (0.8, 0.1, 0.4) -> its group (0.4) second
    np.testing.assert_array_equal(video_to_text_ranks(sim, owners), [1, 3, 2])
    m = retrieval_metrics(np.array([1, 3, 1, 3]))
    assert m.recall == {1: 50.0, 5: 100.0, 10: 100.0} and m.median_rank == 2.0 and m.mean_rank == 2.0
    unknown = retrieval_metrics(np.array([1, np.inf, np.inf]))
    assert unknown.recall[1] == pytest.approx(100 / 3) and unknown.median_rank is None and unknown.mean_rank is None


def test_metrics_equal_clip4clips_on_a_one_to_one_set():
    rng = np.random.default_rng(3)
    for n in (7, 40, 200):
        sim = rng.normal(size=(n, n)) + 2 * np.eye(n) * rng.random(n)  # (captions, videos) as CLIP4Clip holds it
        ours = retrieval_metrics(text_to_video_ranks(sim.T, np.arange(n)))
        theirs = _clip4clip_compute_metrics(sim)
        assert [ours.recall[k] for k in (1, 5, 10)] == pytest.approx([theirs["R1"], theirs["R5"], theirs["R10"]])
        assert ours.median_rank == theirs["MR"] and ours.mean_rank == pytest.approx(theirs["MeanR"])
        v2t = retrieval_metrics(video_to_text_ranks(sim.T, np.arange(n)))  # video -> text: the transpose
        assert v2t.recall[1] == pytest.approx(_clip4clip_compute_metrics(sim.T)["R1"])


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_msrvtt_reads_1k_a_and_a_video_list_with_every_caption(tmp_path):
    _touch(tmp_path / "videos", "video7020.mp4", "video1.mp4", "video2.mp4")
    test = tmp_path / "MSRVTT_JSFUSION_test.csv"
    test.write_text("key,vid_key,video_id,sentence\nret0,msr7020,video7020,a family is having coversation\n"
                    "ret1,msr1,video1, a man plays a guitar \nret2,msr9,video9,missing video\n")
    ds = read_msrvtt(tmp_path / "videos", test)
    assert [r.path.name for r in ds.videos] == ["video7020.mp4", "video1.mp4"]
    assert ds.captions == ("a family is having coversation", "a man plays a guitar") and ds.caption_video == (0, 1)
    assert [p.name for p in ds.missing] == ["video9"]
    train = tmp_path / "MSRVTT_train.9k.csv"
    train.write_text("video_id\nvideo2\nvideo1\n")
    data = tmp_path / "MSRVTT_data.json"
    data.write_text(json.dumps({"videos": [], "sentences": [
        {"caption": "one", "video_id": "video1", "sen_id": 0}, {"caption": "two", "video_id": "video2", "sen_id": 1},
        {"caption": "three", "video_id": "video1", "sen_id": 2}, {"caption": "x", "video_id": "video7020", "sen_id": 3}]}))
    ds = read_msrvtt(tmp_path / "videos", train, data)
    assert [r.path.name for r in ds.videos] == ["video2.mp4", "video1.mp4"]  # the list's order
    assert ds.captions == ("two", "one", "three") and ds.caption_video == (0, 1, 1)
    with pytest.raises(UserError, match="set dataset.captions_json"):
        read_msrvtt(tmp_path / "videos", train)


def test_didemo_joins_a_videos_moments_into_a_paragraph_in_the_lists_order(tmp_path):
    _touch(tmp_path / "v", "a@N00_1.mov.mp4", "b_2.mp4")
    ann = tmp_path / "test_data.json"
    ann.write_text(json.dumps([{"video": "a@N00_1.mov", "description": "a dog runs. ", "times": [[0, 0]]},
                               {"video": "b_2", "description": "the car stops", "times": [[1, 1]]},
                               {"video": "a@N00_1.mov", "description": "it jumps", "times": [[2, 3]]}]))
    ds = read_didemo(tmp_path / "v", ann)
    assert ds.captions == ("a dog runs. it jumps", "the car stops")
    assert [r.path.name for r in ds.videos] == ["a@N00_1.mov.mp4", "b_2.mp4"]
    (tmp_path / "test_list.txt").write_text("b_2\na@N00_1.mov\n")
    assert read_didemo(tmp_path / "v", ann, tmp_path / "test_list.txt").captions == ("the car stops",
                                                                                    "a dog runs. it jumps")
    (tmp_path / "bad.json").write_text(json.dumps({"videos": []}))
    with pytest.raises(UserError, match="bad.json: expected a list"):
        read_didemo(tmp_path / "v", tmp_path / "bad.json")


def test_activitynet_joins_sentences_and_finds_files_with_or_without_v_(tmp_path):
    _touch(tmp_path / "v", "v_QOlSCBRmfWY.mp4", "ehGHCYKzyZ8.mkv")
    ann = tmp_path / "val_1.json"
    ann.write_text(json.dumps({"v_QOlSCBRmfWY": {"duration": 82.7, "timestamps": [[0.8, 19.9], [17.4, 60.8]],
                                                 "sentences": ["A young woman is seen.", " She dances. "]},
                               "v_ehGHCYKzyZ8": {"duration": 61.7, "timestamps": [[0, 10]], "sentences": ["A man."]},
                               "v_gone": {"duration": 1.0, "timestamps": [[0, 1]], "sentences": ["x"]}}))
    ds = read_activitynet(tmp_path / "v", ann)
    assert [r.path.name for r in ds.videos] == ["v_QOlSCBRmfWY.mp4", "ehGHCYKzyZ8.mkv"]
    assert ds.captions == ("A young woman is seen. She dances.", "A man.") and len(ds.missing) == 1


def test_a_captions_csv_keeps_several_captions_per_video_and_names_bad_columns(tmp_path):
    _touch(tmp_path / "v", "a.mp4", "b.mp4")
    (tmp_path / "c.csv").write_text('path,caption\na.mp4,"one, with a comma"\nb.mp4,two\na.mp4,three\n')
    ds = read_captions(tmp_path / "v", tmp_path / "c.csv")
    assert ds.captions == ("one, with a comma", "three", "two") and ds.caption_video == (0, 0, 1)
    (tmp_path / "bad.csv").write_text("file,text\na.mp4,x\n")
    with pytest.raises(UserError, match=r"bad.csv: expected columns caption,path") as e:
        read_captions(tmp_path / "v", tmp_path / "bad.csv")
    assert "\n" not in str(e.value)


def test_retrieval_configs_are_checked(tmp_path):
    for name in ("msrvtt_retrieval", "didemo_retrieval", "activitynet_retrieval"):
        cfg = load_config(name)
        assert cfg.protocol == "retrieval" and cfg.headline == "t2v_R@1"
    with pytest.raises(ConfigError, match="prompt templates do not apply"):
        load_config("msrvtt_retrieval", ["templates=video"])
    with pytest.raises(ConfigError, match="retrieval reads captions"):
        load_config("msrvtt_retrieval", ["dataset.format=ucf101"])
    with pytest.raises(ConfigError, match="headline 'top5' is not a retrieval metric"):
        load_config("msrvtt_retrieval", ["headline=top5"])


# ---- the whole protocol against open_clip on the same random weights ---------------------------------------------

def _frames(path, num_frames: int) -> torch.Tensor:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = [int(np.floor((i + 0.5) * len(frames) / num_frames)) for i in range(num_frames)]  # the TSN rule
    x = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2)  # (T, 3, H, W)
    x = TF.center_crop(TF.resize(x, 32, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), [32, 32])
    return TF.normalize(x.float() / 255, mean=list(clip_model.config.OPENAI_MEAN),
                        std=list(clip_model.config.OPENAI_STD))


def _reference_ranks(sim: torch.Tensor, owners: torch.Tensor) -> tuple[list[int], list[int]]:
    """Ranks by a double argsort, as CLIP4Clip's multi-sentence code ranks (``tensor_text_to_video_metrics``,
    ``tensor_video_to_text_sim``): ``sim`` (T, V) captions against videos."""
    t2v = torch.argsort(torch.argsort(sim, dim=1, descending=True), dim=1)[torch.arange(len(owners)), owners] + 1
    groups = torch.stack([sim[owners == v].max(dim=0).values for v in range(sim.shape[1])])  # (G, V)
    v2t = torch.argsort(torch.argsort(groups.T, dim=1, descending=True), dim=1).diagonal() + 1
    return t2v.tolist(), v2t.tolist()


def test_retrieval_equals_an_independent_open_clip_computation(tmp_path):
    from datasets.world import WorldConfig, write_world

    files = write_world(tmp_path / "world", WorldConfig(clips_per_pair=1, test_clips_per_pair=1))
    with open(files["heldout"].parent / "heldout_captions.csv", newline="") as f:
        clips = list(csv.DictReader(f))
    rows = [(c["path"], c["caption"]) for c in clips] + [(c["path"], f"something {c['action']}") for c in clips[::3]]
    oc = open_clip_model("tiny", seed=5)
    ckpt = clip_model.save_checkpoint(ours_from_open_clip(oc), tmp_path / "model.pt")
    root = files["heldout"].parent
    results, got = run_retrieval(tmp_path, str(ckpt), [(root / p, c) for p, c in rows], num_frames=6)

    videos = list(dict.fromkeys(p for p, _ in rows))  # first-seen order
    owners = torch.tensor([videos.index(p) for p, _ in rows])
    with torch.no_grad():
        v = F.normalize(torch.stack([oc.encode_image(_frames(root / p, 6)).mean(0)
                                     for p in videos]), dim=-1)
        t = F.normalize(oc.encode_text(clip_model.tokenize([c for _, c in rows])), dim=-1)
    t2v, v2t = _reference_ranks(t @ v.T, owners)
    assert len(set(t2v)) > 5  # the ranking discriminates
    got = pd.read_csv(tmp_path / "out" / "predictions.csv")
    t2v_rows = got[got.direction == "t2v"]
    assert t2v_ranks(got) == {(c, Path(p).name): r for (p, c), r in zip(rows, t2v)} and len(t2v_rows) == len(rows)
    assert got[got.direction == "v2t"]["rank"].tolist() == v2t  # videos in first-seen order
    m = results["splits"][0]["metrics"]
    assert m["t2v_R@1"] == pytest.approx(100 * np.mean(np.array(t2v) == 1))
    assert m["v2t_MdR"] == pytest.approx(float(np.median(v2t)))
    assert m["t2v_queries"] == len(rows) and m["v2t_queries"] == len(videos) == results["splits"][0]["videos"]
    # through search's index: every match among its hits, at the exact rank (the refine step re-ranks exactly)
    assert t2v_rows["index_rank"].tolist() == t2v_rows["rank"].tolist()
    assert m["index_t2v_R@1"] == m["t2v_R@1"] and m["index_recall@10"] == 100.0
    report = (tmp_path / "out" / "report.html").read_text()
    assert "worst-ranked captions" in report and report.count("<img") == 2


def test_the_index_run_loses_only_what_its_recall_explains(tmp_path):
    """Through search's IVF-PQ index, with few hits a query, PQ's coarse ranking misses some of the exact top hits:
    a found match ranks by the exact score among the hits (never worse than exactly, and first exactly when first
    exactly), and R@1 falls by at most the share of captions whose exactly best video the index did not return."""
    from datasets.records import CaptionDataset, VideoRecord
    from pipeline.jobs.retrieval import Scored, index_ranks

    n = 1500
    rng = np.random.default_rng(0)
    videos = F.normalize(torch.from_numpy(rng.normal(size=(n, 64))).float(), dim=-1)
    queries = F.normalize(videos + torch.from_numpy(rng.normal(scale=0.15, size=(n, 64))).float(), dim=-1)
    sim = (videos @ queries.T).numpy()  # (V, T): caption t describes video t
    ds = CaptionDataset("random", tuple(VideoRecord(tmp_path / f"{i}.mp4", i) for i in range(n)),
                        tuple(f"q{t}" for t in range(n)), tuple(range(n)))
    exact = text_to_video_ranks(sim, np.arange(n))
    indexed, recall = index_ranks(Scored(ds, videos.numpy(), queries.numpy(), sim, conditioned=False), tmp_path,
                                  hits=2)
    assert recall < 100 and 0 < np.mean(exact == 1) < 1  # the index misses some, and R@1 says something
    found = np.isfinite(indexed)
    assert (indexed[found] <= exact[found]).all() and ((indexed[found] == 1) == (exact[found] == 1)).all()
    best_missed = np.mean((exact == 1) & ~found)
    drop = retrieval_metrics(exact).recall[1] - retrieval_metrics(indexed).recall[1]
    assert drop == pytest.approx(100 * best_missed)
