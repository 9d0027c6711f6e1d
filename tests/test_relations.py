"""Relational words resolved on hand-made boxes: what the grounder cannot do, and the sentence that explains it."""

from __future__ import annotations

import pytest

from pipelines.core.errors import InputError
from pipelines.segmentation.relations import Candidate, Query, parse_expression, resolve


@pytest.mark.parametrize("expression, expected", [
    ("the dog on the left", ("dog", "left", 1, 1)),
    ("the leftmost dog", ("dog", "left", 1, 1)),
    ("the left-most dog", ("dog", "left", 1, 1)),
    ("the dog on the right", ("dog", "right", 1, 1)),
    ("the rightmost dog", ("dog", "right", 1, 1)),
    ("the far right car", ("car", "right", 1, 1)),
    ("the dog on the left-hand side of the frame", ("dog", "left", 1, 1)),
    ("the dog on the right side of the image", ("dog", "right", 1, 1)),
    ("the bird at the top", ("bird", "top", 1, 1)),
    ("the upper bird", ("bird", "top", 1, 1)),
    ("the topmost bird", ("bird", "top", 1, 1)),
    ("the highest bird", ("bird", "top", 1, 1)),
    ("the bird above", ("bird", "top", 1, 1)),
    ("the bird at the very top of the picture", ("bird", "top", 1, 1)),
    ("the bird at the bottom", ("bird", "bottom", 1, 1)),
    ("the lower bird", ("bird", "bottom", 1, 1)),
    ("the lowest bird", ("bird", "bottom", 1, 1)),
    ("the bird below", ("bird", "bottom", 1, 1)),
    ("the dog in the middle", ("dog", "middle", 1, 1)),
    ("the dog in the center of the video", ("dog", "middle", 1, 1)),
    ("the dog in the centre", ("dog", "middle", 1, 1)),
    ("the central dog", ("dog", "middle", 1, 1)),
    ("the largest balloon", ("balloon", "largest", 1, 1)),
    ("the biggest balloon", ("balloon", "largest", 1, 1)),
    ("the smallest balloon", ("balloon", "smallest", 1, 1)),
    ("the tiniest balloon", ("balloon", "smallest", 1, 1)),
    ("the second dog from the right", ("dog", "right", 2, 1)),
    ("the second one from the right dog", ("dog", "right", 2, 1)),
    ("the third dog from the left", ("dog", "left", 3, 1)),
    ("the 3rd car from the right", ("car", "right", 3, 1)),
    ("the fifth car from the left", ("car", "left", 5, 1)),
    ("the second largest balloon", ("balloon", "largest", 2, 1)),
    ("the second dog", ("dog", "left", 2, 1)),            # no direction: reading order
    ("the first dog", ("dog", None, 1, 1)),
    ("the two dogs", ("dog", None, 1, 2)),
    ("both cats", ("cat", None, 1, 2)),
    ("three birds", ("bird", None, 1, 3)),
    ("a pair of shoes", ("shoe", None, 1, 2)),
    ("2 dogs", ("dog", None, 1, 2)),
    ("the two boxes", ("box", None, 1, 2)),
    ("the two dogs on the left", ("dog", "left", 1, 2)),
    ("the two people holding cups", ("person holding cups", None, 1, 2)),
    ("the two red buildings", ("red building", None, 1, 2)),
    ("all the birds", ("bird", None, 1, 0)),
    ("all of the puppies", ("puppy", None, 1, 0)),
    ("every dog", ("dog", None, 1, 0)),
    ("the red car on the left", ("red car", "left", 1, 1)),
    ("the person holding a cup", ("person holding a cup", None, 1, 1)),
    ("the man with two dogs", ("man with two dogs", None, 1, 1)),   # a count only at the head
    ("the dogs", ("dogs", None, 1, 1)),
    ("THE  Dog on the LEFT.", ("dog", "left", 1, 1)),
    ("ＴＨＥ ｄｏｇ！", ("dog", None, 1, 1)),
    ("😀 dog,,, ;; on   the\tright?!", ("dog", "right", 1, 1)),
    ("the dog's ball", ("dog's ball", None, 1, 1)),
    ("the t-shirt on the left", ("t-shirt", "left", 1, 1)),
])
def test_expressions_split_into_phrase_and_relation(expression, expected):
    query = parse_expression(expression)
    assert (query.phrase, query.relation, query.ordinal, query.count) == expected


@pytest.mark.parametrize("expression", ["", "   ", "the", "...", "second from the right", "the leftmost one", "all"])
def test_expression_without_a_noun_is_refused(expression):
    with pytest.raises(InputError, match="Say what to look for, e.g. 'the dog on the left'."):
        parse_expression(expression)


@pytest.mark.parametrize("expression, message", [
    ("the top left dog", "one position word"),
    ("0 dogs", "at least one"),
])
def test_unsupported_expressions_are_refused_with_a_reason(expression, message):
    with pytest.raises(InputError, match=message):
        parse_expression(expression)


def test_query_rejects_impossible_values():
    for bad in (dict(relation="behind"), dict(relation="left", ordinal=0), dict(relation=None, count=-1)):
        with pytest.raises(InputError):
            Query("dog", **bad)


def box(cx, cy, w=20, h=20, score=0.5):
    return Candidate((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), score, "dog")


# Three dogs in a 640 x 480 frame: small one top-left, medium one low-centre-right, big one bottom-right.
DOGS = [box(300, 250, 40, 40, score=0.7), box(41, 30, 40, 40, score=0.6), box(500, 400, 100, 120, score=0.9)]


@pytest.mark.parametrize("relation, ordinal, expected", [
    (None, 1, 2), ("left", 1, 1), ("left", 2, 0), ("left", 3, 2), ("right", 1, 2), ("right", 2, 0),
    ("top", 1, 1), ("bottom", 1, 2), ("bottom", 3, 1), ("largest", 1, 2), ("smallest", 1, 0), ("smallest", 2, 1),
    ("middle", 1, 0),
])
def test_each_relation_picks_its_box(relation, ordinal, expected):
    choice = resolve(Query("dog", relation, ordinal), DOGS, frame_size=(640, 480))
    assert choice.chosen == (expected,)
    assert choice.score == DOGS[expected].score


def reason(query, candidates, **where):
    return resolve(query, candidates, **where).reason


def test_exact_reasons():
    assert reason(Query("dog", "left"), DOGS, frame=12) == "3 dogs found on frame 12; chose the leftmost, x = 41 px."
    cars = [box(310, 100, score=0.8), box(500, 100, score=0.6)]
    assert reason(Query("car", "right", 2), cars) == "2 cars found; chose the second from the right (x = 310 px)."
    people = [Candidate((0, 0, 10, 10), 0.81), Candidate((50, 0, 60, 10), 0.77), Candidate((20, 0, 30, 10), 0.5),
              Candidate((90, 0, 99, 9), 0.1)]
    choice = resolve(Query("person", None, count=2), people)
    assert choice.chosen == (0, 1) and choice.score == pytest.approx(0.79)
    assert choice.reason == "4 people found; chose the 2 highest-scoring (0.81, 0.77), left to right."
    assert resolve(Query("dog", "largest"), DOGS).reason == "3 dogs found; chose the largest, area = 12000 px²."
    assert resolve(Query("dog", "top"), DOGS).reason == "3 dogs found; chose the topmost, y = 30 px."
    assert reason(Query("dog", None), DOGS[:1], frame=0) == \
        "1 dog found on frame 0; chose the highest-scoring, score 0.70."
    assert resolve(Query("dog", "middle"), DOGS, frame_size=(640, 480)).reason == \
        "3 dogs found; chose the most central, 22 px from the centre."


def test_middle_without_frame_size_uses_the_centre_of_the_boxes():
    # Boxes span x 21..550, y 10..460: centre (285.5, 235), nearest is still the first dog, 21 px away.
    choice = resolve(Query("dog", "middle"), DOGS)
    assert choice.chosen == (0,)
    assert choice.reason == "3 dogs found; chose the most central, 21 px from the centre of the boxes."
    # A frame whose centre sits on the big dog changes the answer.
    assert resolve(Query("dog", "middle"), DOGS, frame_size=(1000, 800)).chosen == (2,)


def test_a_count_takes_the_best_by_score_and_orders_them_left_to_right():
    choice = resolve(Query("dog", None, count=2), DOGS)
    assert choice.chosen == (0, 2)
    assert choice.score == pytest.approx(0.8)


def test_a_count_with_a_relation_takes_the_first_in_that_order():
    choice = resolve(Query("dog", "right", count=2), DOGS)
    assert choice.chosen == (0, 2)   # the two rightmost, ids left to right
    assert choice.reason == "3 dogs found; chose the 2 rightmost (x = 500, 300 px), left to right."
    assert resolve(Query("dog", "left", count=2), DOGS).chosen == (1, 0)


def test_all_takes_every_box_left_to_right():
    choice = resolve(Query("bird", None, count=0), DOGS, frame=3)
    assert choice.chosen == (1, 0, 2)
    assert choice.reason == "3 birds found on frame 3; chose all 3, left to right."
    assert choice.score == pytest.approx((0.7 + 0.6 + 0.9) / 3)
    assert resolve(Query("bird", None, count=0), DOGS[:1]).reason == "1 bird found; chose it."


def test_ties_are_broken_by_score_then_by_index():
    same_x = [box(100, 50, score=0.4), box(100, 300, score=0.8), box(100, 200, score=0.8), box(400, 50, score=0.9)]
    assert resolve(Query("dog", "left"), same_x).chosen == (1,)
    assert resolve(Query("dog", "left", 2), same_x).chosen == (2,)
    assert resolve(Query("dog", "left", 3), same_x).chosen == (0,)
    same_area = [box(10, 10, score=0.3), box(200, 10, score=0.6)]
    assert resolve(Query("dog", "smallest"), same_area).chosen == (1,)
    assert resolve(Query("dog", "largest"), same_area).chosen == (1,)


def test_near_duplicates_are_merged_and_reported():
    twice = [box(41, 30, 40, 40, score=0.6), box(42, 30, 40, 40, score=0.65), box(300, 250, score=0.7)]
    choice = resolve(Query("dog", "left"), twice, frame=1)
    assert choice.chosen == (1,)   # the higher-scoring copy survives
    assert choice.reason == "2 dogs found on frame 1 (1 duplicate box merged); chose the leftmost, x = 42 px."
    overlapping = [box(41, 30, 40, 40, score=0.6), box(61, 30, 40, 40, score=0.65)]   # IoU 1/3: two dogs
    assert "merged" not in resolve(Query("dog", "left"), overlapping).reason
    with pytest.raises(InputError, match=r"Only 2 dogs found \(1 duplicate box merged\); '3 dogs' needs at least 3."):
        resolve(Query("dog", None, count=3), twice)


def test_too_few_objects_says_how_many_were_found_and_needed():
    with pytest.raises(InputError) as info:
        resolve(Query("dog", "left", 3), DOGS[:2], frame=5)
    assert str(info.value) == "Only 2 dogs found on frame 5; 'third from the left' needs at least 3."
    with pytest.raises(InputError, match="Only 1 dog found; 'second largest' needs at least 2."):
        resolve(Query("dog", "largest", 2), DOGS[:1])
    with pytest.raises(InputError, match="Only 2 cats found; '3 cats' needs at least 3."):
        resolve(Query("cat", None, count=3), DOGS[:2])


def test_no_candidates_names_the_phrase_and_the_frame():
    with pytest.raises(InputError, match="No red car found on frame 7"):
        resolve(Query("red car", "left"), [], frame=7)
    with pytest.raises(InputError, match="^No dog found;"):
        resolve(Query("dog", None), [])


def test_parsed_expression_resolves_end_to_end():
    query = parse_expression("The second dog from the LEFT!")
    assert reason(query, DOGS, frame=2) == "3 dogs found on frame 2; chose the second from the left (x = 300 px)."
