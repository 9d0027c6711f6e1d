"""Relational words resolved on hand-made boxes: what the grounder cannot do, and the sentence that explains it."""

from __future__ import annotations

import re

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
    ("the dogs", ("dog", None, 1, 0)),                        # a plural without a count: all of them
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


def box(cx, cy, w=20, h=20, score=0.5, label=""):
    return Candidate((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), score, label)


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
    assert choice.reason == ("3 people found (1 weak box (under 50% of the best score 0.81) dropped); chose the 2 "
                             "highest-scoring (0.81, 0.77), left to right.")
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
    same_x = [box(100, 50, score=0.5), box(100, 300, score=0.8), box(100, 200, score=0.8), box(400, 50, score=0.9)]
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


# ----------------------------------------------------------------- honest parsing: read, route or refuse, never drop
# (phrase, relation, ordinal, count, exclude, anchor, unread) or "!" + the refusal's words. `unread` is what the
# rules do not read: the pipeline then hands the whole expression to a grounder that reads it, or refuses.
READINGS = [
    ("the red disc on the left", ("red disc", "left", 1, 1, False, None, ())),
    ("all the dogs", ("dog", None, 1, 0, False, None, ())),
    ("the dogs", ("dog", None, 1, 0, False, None, ())),
    ("not the left dog", ("dog", "left", 1, 1, True, None, ())),
    ("every dog except the left one", ("dog", "left", 1, 1, True, None, ())),
    ("the dogs other than the largest", ("dog", "largest", 1, 1, True, None, ())),
    ("all dogs but the second from the right", ("dog", "right", 2, 1, True, None, ())),
    ("all but the largest balloon", ("balloon", "largest", 1, 1, True, None, ())),
    ("both cats except the left one", ("cat", "left", 1, 1, True, None, ())),
    ("every animal except the cat", ("animal", None, 1, 1, True, None, ("except the cat",))),
    ("not the dog", ("dog", None, 1, 1, True, None, ("not the dog",))),
    ("the dog on the left of the cat", ("dog", "left", 1, 1, False, "cat", ())),
    ("the dog to the right of a car", ("dog", "right", 1, 1, False, "car", ())),
    ("the dog left of the cat", ("dog", "left", 1, 1, False, "cat", ())),
    ("the second dog left of the cat", ("dog", "left", 2, 1, False, "cat", ())),
    ("the lamp above the table", ("lamp", "top", 1, 1, False, "table", ())),
    ("the cat under the table", ("cat", "bottom", 1, 1, False, "table", ())),
    ("the cat on top of the car", ("cat", "top", 1, 1, False, "car", ())),
    ("the cup next to the laptop", ("cup", "near", 1, 1, False, "laptop", ())),
    ("the man beside a car", ("man", "near", 1, 1, False, "car", ())),
    ("the dog closest to the cat", ("dog", "near", 1, 1, False, "cat", ())),
    ("the dog left of the largest cat", ("dog", "left", 1, 1, False, "largest cat", ("left of the largest cat",))),
    ("a top hat", ("top hat", None, 1, 1, False, None, ())),
    ("the man in the top hat", ("man in the top hat", None, 1, 1, False, None, ())),
    ("the right hand", ("right hand", None, 1, 1, False, None, ())),
    ("the person raising their right hand", ("person raising their right hand", None, 1, 1, False, None, ())),
    ("the car in the right lane", ("car in the right lane", None, 1, 1, False, None, ())),
    ("the second-hand bike", ("second-hand bike", None, 1, 1, False, None, ())),
    ("the middle-aged man", ("middle-aged man", None, 1, 1, False, None, ())),
    ("the left-handed player", ("left-handed player", None, 1, 1, False, None, ())),
    ("the first aid kit", ("first aid kit", None, 1, 1, False, None, ())),
    ("the bottom shelf", ("bottom shelf", None, 1, 1, False, None, ())),
    ("the dog on the right-hand side", ("dog", "right", 1, 1, False, None, ())),
    ("the dog on the left side of the image", ("dog", "left", 1, 1, False, None, ())),
    ("the bigger dog", ("dog", "largest", 1, 1, False, None, ())),
    ("the smaller cat", ("cat", "smallest", 1, 1, False, None, ())),
    ("the higher bird", ("bird", "top", 1, 1, False, None, ())),
    ("the lower bird", ("bird", "bottom", 1, 1, False, None, ())),
    ("the last dog", ("dog", "right", 1, 1, False, None, ())),
    ("the last car on the left", ("car", "left", 1, 1, False, None, ("last",))),
    ("the smallest of the balloons", ("balloon", "smallest", 1, 1, False, None, ())),
    ("the leftmost of the dogs", ("dog", "left", 1, 1, False, None, ())),
    ("the second of the dogs from the right", ("dog", "right", 2, 1, False, None, ())),
    ("the glasses on the left", ("glasses", "left", 1, 1, False, None, ())),
    ("the dog closest to the camera", ("dog", None, 1, 1, False, None, ("closest to the camera",))),
    ("the nearest dog", ("dog", None, 1, 1, False, None, ("nearest",))),
    ("the farthest car", ("car", None, 1, 1, False, None, ("farthest",))),
    ("the dog behind the fence", ("dog", None, 1, 1, False, None, ("behind the fence",))),
    ("the car in front of the house", ("car", None, 1, 1, False, None, ("in front of the house",))),
    ("the person in the background", ("person", None, 1, 1, False, None, ("in the background",))),
    ("the man without a hat", ("man", None, 1, 1, False, None, ("without a hat",))),
    ("the dog that is not black", ("dog", None, 1, 1, False, None, ("not black",))),
    ("the dog with no collar", ("dog", None, 1, 1, False, None, ("no collar",))),
    ("the dog bigger than the cat", ("dog", None, 1, 1, False, None, ("bigger than the cat",))),
    ("the taller man", ("man", None, 1, 1, False, None, ("taller",))),
    ("the ball between the two dogs", ("ball", None, 1, 1, False, None, ("between the two dogs",))),
    ("the two dogs on the left", ("dog", "left", 1, 2, False, None, ())),
    ("three birds", ("bird", None, 1, 3, False, None, ())),
    ("the woman holding an umbrella on the right", ("woman holding an umbrella", "right", 1, 1, False, None, ())),
    ("the third car from the left", ("car", "left", 3, 1, False, None, ())),
    ("the dog at the top of the frame", ("dog", "top", 1, 1, False, None, ())),
    ("the person on the far right", ("person", "right", 1, 1, False, None, ())),
    ("the dog that is running on the left", ("dog that is running", "left", 1, 1, False, None, ())),
    ("the dog in the middle", ("dog", "middle", 1, 1, False, None, ())),
    ("any dog but the biggest", ("dog", "largest", 1, 1, True, None, ())),
    ("the woman in the middle lane", ("woman in the middle lane", None, 1, 1, False, None, ())),
    ("the second-largest balloon", ("balloon", "largest", 2, 1, False, None, ())),
    ("the tallest tree", ("tree", None, 1, 1, False, None, ("tallest",))),
    ("the ball near the camera", ("ball", None, 1, 1, False, None, ("near the camera",))),
    ("the links of the chain", ("link of the chain", None, 1, 0, False, None, ())),     # English, and all of them
    ("the dog à gauche", "!read English"),
    ("the dogs on the left", "!Say how many dogs: e.g. 'the two dogs on the left', 'the dog on the left'"),
    ("the top-left dog", "!one position word at a time"),
    ("the dog in the lower right corner", "!one position word at a time"),
    ("the dog left of the cat on the right", ("dog", "left", 1, 1, False, "cat on the right",
                                              ("left of the cat on the right",))),
    ("el perro de la izquierda", "!read English"),
    ("der Hund links", "!read English"),
    ("le chien à gauche", "!read English"),
    ("左边的狗", "!read English"),
    ("собака слева", "!read English"),
    ("perro", "!read English"),
]


@pytest.mark.parametrize("expression, expected", READINGS, ids=[e for e, _ in READINGS])
def test_every_expression_is_read_routed_or_refused_never_silently_dropped(expression, expected):
    if isinstance(expected, str):
        with pytest.raises(InputError, match=re.escape(expected[1:])):
            parse_expression(expression)
        return
    q = parse_expression(expression)
    assert (q.phrase, q.relation, q.ordinal, q.count, q.exclude, q.anchor, q.unread) == expected
    assert q.understood() == (not expected[-1])
    if expected[-1]:
        assert all(f"“{u}”" in q.not_understood() for u in expected[-1])
        assert "Florence-2" in q.refusal(expression) and expression in q.refusal(expression)


def test_the_table_holds_at_least_sixty_expressions_of_every_kind():
    kinds = {"exclude": [e for e, x in READINGS if not isinstance(x, str) and x[4]],
             "anchor": [e for e, x in READINGS if not isinstance(x, str) and x[5]],
             "unread": [e for e, x in READINGS if not isinstance(x, str) and x[6]],
             "refused": [e for e, x in READINGS if isinstance(x, str)]}
    assert len(READINGS) >= 60 and all(len(v) >= 4 for v in kinds.values()), {k: len(v) for k, v in kinds.items()}


def test_negation_leaves_out_what_it_names():
    dogs = [box(50, 100, score=0.8), box(300, 100, score=0.8), box(550, 100, score=0.8)]
    choice = resolve(parse_expression("not the left dog"), dogs, frame=2)
    assert choice.chosen == (1, 2)
    assert choice.reason == ("3 dogs found on frame 2; left out the leftmost (x = 50 px) and chose the other 2, left "
                             "to right.")
    assert resolve(parse_expression("every dog except the largest"), [dogs[0], box(300, 100, 80, 80, 0.8)]).chosen \
        == (0,)
    with pytest.raises(InputError, match="leaving out the leftmost leaves none"):
        resolve(parse_expression("not the left dog"), dogs[:1])


def test_a_relation_to_another_object_is_measured_from_its_box():
    """Three dogs, a cat at x = 400: "left of the cat" is the dog nearest the cat on its left (x = 300), not the
    frame's leftmost (x = 50)."""
    dogs = [box(50, 100, score=0.8, label="dog"), box(300, 100, score=0.7, label="dog"),
            box(550, 100, score=0.9, label="dog")]
    cats = [box(400, 110, score=0.6, label="cat"), box(100, 300, score=0.3, label="cat")]
    choice = resolve(parse_expression("the dog on the left of the cat"), dogs, frame=4, anchors=cats)
    assert choice.chosen == (1,)
    assert choice.reason == ("3 dogs found on frame 4, and a cat at x = 400, y = 110 px (score 0.60); chose the "
                             "nearest dog left of the cat (100 px from it).")
    assert resolve(parse_expression("the second dog left of the cat"), dogs, anchors=cats).chosen == (0,)
    assert resolve(parse_expression("the dog right of the cat"), dogs, anchors=cats).chosen == (2,)
    assert resolve(parse_expression("the dog next to the cat"), dogs, anchors=cats).chosen == (1,)
    with pytest.raises(InputError, match="No cat found on frame 4 to place the dog against"):
        resolve(parse_expression("the dog left of the cat"), dogs, frame=4, anchors=[])
    with pytest.raises(InputError, match="0 of them below the cat"):
        resolve(parse_expression("the dog below the cat"), dogs, anchors=cats)


def test_boxes_for_other_nouns_and_weak_boxes_are_no_candidates():
    """Grounding DINO boxes every noun phrase of the text: the cup in "the person holding a cup" is set aside by its
    label; a 0.26 box at the frame's edge is under half the best score and cannot be the leftmost."""
    found = [Candidate((300, 50, 360, 250), 0.7, "person"), Candidate((0, 100, 20, 130), 0.75, "cup"),
             Candidate((500, 60, 560, 240), 0.6, "person holding")]
    choice = resolve(parse_expression("the person holding a cup on the left"), found)
    assert choice.chosen == (0,)
    assert "1 box for “cup” set aside" in choice.reason
    edge = [box(5, 200, 10, 60, score=0.26, label="dog"), box(200, 200, 80, 80, score=0.8, label="dog"),
            box(400, 200, 80, 80, score=0.82, label="dog")]
    left = resolve(parse_expression("the leftmost dog"), edge)
    assert left.chosen == (1,) and "1 weak box (under 50% of the best score 0.82) dropped" in left.reason
    assert resolve(parse_expression("the largest dog"), [*edge[:1], box(5, 200, 300, 300, 0.26, "dog"),
                                                         *edge[1:]]).chosen in ((2,), (3,))
