"""Active crawling: the run asks the crawler only for the share of its queries whose words its
training texts know least; queries already cached are used for free."""
from __future__ import annotations

import pytest

from services.trainer.online.active import CrawlChooser, chooser_from
from shared.options import crawl_share, replay_ratio

TRAINING = ["红色条纹T恤", "红色纯色杯子", "蓝色条纹杯子", "蓝色纯色T恤", "绿色格子T恤"]


def _chooser(share, cached=()):
    return CrawlChooser(share, TRAINING, lambda split, query: query in cached)


def test_queries_with_words_the_training_texts_never_use_are_crawled_first():
    chooser = _chooser(0.5)
    queries = ["红色条纹T恤", "紫色条纹鞋", "蓝色纯色杯子", "紫色格子T恤"]
    use, skipped = chooser.choose("valid", queries)
    # 紫 and 鞋 are unknown words; 紫色条纹鞋 has two of them (0, 0, ...) and ranks first.
    assert use == {"紫色条纹鞋", "紫色格子T恤"} and skipped == 2
    assert chooser.novelty("紫色条纹鞋") < chooser.novelty("紫色格子T恤") < chooser.novelty("红色条纹T恤")


def test_the_share_bounds_the_requests_over_every_pass():
    chooser = _chooser(0.5)
    queries = ["红色条纹T恤", "紫色条纹鞋", "蓝色纯色杯子", "紫色格子T恤"]
    first, _ = chooser.choose("valid", queries)
    again, _ = chooser.choose("valid", list(reversed(queries)))
    assert again == first  # a later pass asks for nothing new
    # New queries earn new room: half of the six distinct queries met so far.
    later, skipped = chooser.choose("valid", ["橙色格子包", "红色纯色杯子"])
    assert later == {"橙色格子包"} and skipped == 1
    assert chooser.choose("test", ["橙色格子包"])[0] == {"橙色格子包"}  # splits count apart


def test_cached_queries_are_used_and_do_not_count_against_the_share():
    chooser = _chooser(0.25, cached={"红色条纹T恤", "蓝色纯色杯子"})
    use, skipped = chooser.choose("valid", ["红色条纹T恤", "蓝色纯色杯子", "紫色条纹鞋", "绿色纯色杯子"])
    assert use == {"红色条纹T恤", "蓝色纯色杯子", "紫色条纹鞋"} and skipped == 1


def test_a_share_out_of_range_is_refused_and_no_share_crawls_everything():
    with pytest.raises(ValueError, match="crawl share"):
        _chooser(0)
    assert chooser_from(None, dict, lambda s, q: False, "x") is None
    assert chooser_from(1.0, dict, lambda s, q: False, "x") is None
    assert chooser_from(0.5, dict, lambda s, q: False, None) is None  # nothing to measure novelty on


def test_auto_halves_the_crawl_in_training_and_crawls_everything_at_test_time():
    from pydantic import ValidationError

    from services.trainer.cli import build_parser
    from shared.options import OnlineOptions

    assert crawl_share("auto", test_time=False) == 0.5 and crawl_share("auto", test_time=True) is None
    assert crawl_share(0.25, test_time=True) == 0.25 and crawl_share(None, test_time=False) is None
    assert OnlineOptions().online_crawl_share == "auto"
    args = build_parser("train").parse_args(["train", "--online-crawl-share", "0.3"])
    assert OnlineOptions(online_crawl_share=args.online_crawl_share).online_crawl_share == 0.3  # as the CLI gives it
    assert OnlineOptions(online_crawl_share="none").online_crawl_share is None
    for bad in ("1.5", "0", "half"):
        with pytest.raises(ValidationError, match="online_crawl_share"):
            OnlineOptions(online_crawl_share=bad)


def test_auto_replays_one_offline_pair_per_crawled_pair_in_training_and_two_at_test_time():
    from pydantic import ValidationError

    from shared.options import OnlineOptions

    assert OnlineOptions().online_replay == "auto"
    assert replay_ratio("auto", test_time=False) == 1.0 and replay_ratio("auto", test_time=True) == 2.0
    assert OnlineOptions(online_replay="0").online_replay == 0.0  # as the command line gives it
    assert replay_ratio(0.0, test_time=True) == 0.0
    for bad in ("-1", "17", "lots"):
        with pytest.raises(ValidationError, match="online_replay"):
            OnlineOptions(online_replay=bad)


def test_agreement_is_measured_against_all_other_pictures_unless_told_the_nearest_n():
    from pydantic import ValidationError

    from services.trainer.cli import build_parser
    from shared.options import OnlineOptions

    assert OnlineOptions().online_agreement_neighbours is None
    args = build_parser("train").parse_args(["train", "--online-agreement-neighbours", "2"])
    assert OnlineOptions(online_agreement_neighbours=args.online_agreement_neighbours).online_agreement_neighbours == 2
    assert OnlineOptions(online_agreement_neighbours="none").online_agreement_neighbours is None
    for bad in ("0", "20", "many"):
        with pytest.raises(ValidationError, match="online_agreement_neighbours"):
            OnlineOptions(online_agreement_neighbours=bad)
