import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sonify.concepts.parser import parse_concepts, split_item

REPLIES = [
    ("1. Dog - The sound of barking\n2. Car - Engine humming\n3. Bird - Chirping",
     [("Dog", "The sound of barking"), ("Car", "Engine humming"), ("Bird", "Chirping")]),
    ("1) Water splashing: The sound of water hitting the rocks.\n2) Seagull: squawking",
     [("Water splashing", "The sound of water hitting the rocks"), ("Seagull", "squawking")]),
    ("Sure! Here is the list:\n\n1. **Train**: The rumble of wheels on tracks.\n2. **Horn** - A loud honk\n\nThese sounds capture the busy station.",
     [("Train", "The rumble of wheels on tracks"), ("Horn", "A loud honk")]),
    ("- Dog: barking\n- Cat: meowing\n* Clock – ticking\n• Kettle — whistling",
     [("Dog", "barking"), ("Cat", "meowing"), ("Clock", "ticking")]),
    ("['dog barking', 'people chatting', 'cars passing by']",
     [("dog barking", "dog barking"), ("people chatting", "people chatting"), ("cars passing by", "cars passing by")]),
    ("Here you go: [\"waves crashing\", \"wind howling\"]", [("waves crashing", "waves crashing"), ("wind howling", "wind howling")]),
    ("1. Dog: barking 2. Car: honking 3. Bird: singing", [("Dog", "barking"), ("Car", "honking"), ("Bird", "singing")]),
    ("1. Guitar\n2. Drums", [("Guitar", "Guitar"), ("Drums", "Drums")]),
    ("1. Ocean waves - The sound of waves crashing.\n2. Ocean waves - The sound of waves crashing.",
     [("Ocean waves", "The sound of waves crashing")]),
]


@pytest.mark.parametrize("reply, expected", REPLIES)
def test_real_looking_replies(reply, expected):
    result = parse_concepts(reply)
    assert result.error is None
    assert [(c.object, c.sound) for c in result.concepts] == expected
    assert all(c.text == c.sound for c in result.concepts)  # default template "{sound}"


def test_more_than_three_items_keeps_three_and_records_it():
    r = parse_concepts("\n".join(f"{i}. Thing{i} - noise {i}" for i in range(1, 7)))
    assert [c.object for c in r.concepts] == ["Thing1", "Thing2", "Thing3"] and r.items_found == 6


@pytest.mark.parametrize("reply", ["", "   ", None, "The image shows a calm landscape with no sounds.", "I cannot help with that."])
def test_replies_without_a_list_are_parse_errors(reply):
    r = parse_concepts(reply)
    assert r.concepts == [] and r.error.startswith("parse_error:")


def test_text_template():
    (c,) = parse_concepts("1. Dog - barking", template="{object} {sound}").concepts
    assert c.text == "Dog barking"


def test_split_item_keeps_hyphenated_words():
    assert split_item("Wind-chime - tinkling") == ("Wind-chime", "tinkling")
    assert split_item("Lawn mower") == ("Lawn mower", "Lawn mower")


WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=9)
PHRASE = st.lists(WORD, min_size=1, max_size=4).map(" ".join)


@st.composite
def rendered_list(draw):
    items = draw(st.lists(st.tuples(PHRASE, PHRASE), min_size=1, max_size=6, unique_by=lambda t: t[0]))
    marker = draw(st.sampled_from(["{i}.", "{i})", "-", "*", "•"]))
    sep = draw(st.sampled_from([" - ", ": ", " – ", " — "]))
    bold = draw(st.booleans())
    lines = []
    if draw(st.booleans()):
        lines += ["Sure! Here are the sounds I can identify in this image:", ""]
    for i, (obj, sound) in enumerate(items, 1):
        o = f"**{obj.capitalize()}**" if bold else obj.capitalize()
        lines.append(f"{marker.format(i=i)} {o}{sep}The sound of {sound}.")
    if draw(st.booleans()):
        lines += ["", "These sounds make the scene come alive."]
    return items, "\n".join(lines)


@settings(max_examples=200, deadline=None)
@given(rendered_list())
def test_property_rendered_lists_round_trip(case):
    items, reply = case
    r = parse_concepts(reply)
    assert r.error is None
    assert [c.object.lower() for c in r.concepts] == [o for o, _ in items[:3]]
    assert [c.sound for c in r.concepts] == [f"The sound of {s}" for _, s in items[:3]]
    assert r.items_found == len(items)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_property_never_raises_and_is_bounded(text):
    r = parse_concepts(text)
    assert (r.error is None) == bool(r.concepts)
    assert len(r.concepts) <= 3 and all(c.object and c.text for c in r.concepts)
