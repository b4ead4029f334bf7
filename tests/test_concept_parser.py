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
    # the paper's Figure 2 LLaVA reply shape: a Python-list look, apostrophes inside single quotes
    ("['Bull - The sound of a bull's charge and its hooves pounding the ground', 'Matador - The sound of the matador's cape swishing', 'Crowd - The sound of the crowd cheering']",
     [("Bull", "The sound of a bull's charge and its hooves pounding the ground"),
      ("Matador", "The sound of the matador's cape swishing"), ("Crowd", "The sound of the crowd cheering")]),
    ("1.Clock:ticking\n2.Kettle:whistling", [("Clock", "ticking"), ("Kettle", "whistling")]),
    ("Woman: humming", [("Woman", "humming")]),
    ("Wind chime - tinkling", [("Wind chime", "tinkling")]),
    ("Dog (barking), cat (meowing), bird (chirping)", [("Dog", "barking"), ("cat", "meowing"), ("bird", "chirping")]),
    ("Dog barking, car honking and birds chirping.", [("Dog barking", "Dog barking"), ("car honking", "car honking"), ("birds chirping", "birds chirping")]),
    # JSON: arrays of objects in a code fence (Qwen2-VL / InternVL style), arrays of strings, objects holding arrays
    ('```json\n[\n  {"object": "Dog", "sound": "barking"},\n  {"object": "Car", "sound": "engine revving"}\n]\n```',
     [("Dog", "barking"), ("Car", "engine revving")]),
    ('["Dog - barking", "Rain - pattering on the roof"]', [("Dog", "barking"), ("Rain", "pattering on the roof")]),
    ('Here are the sounds:\n```json\n{"Dog": "barking", "Bird": "chirping"}\n```', [("Dog", "barking"), ("Bird", "chirping")]),
    ('```python\n["waves crashing", "wind howling"]\n```', [("waves crashing", "waves crashing"), ("wind howling", "wind howling")]),
    ('[["Dog", "barking"], ["Cat", "purring"]]', [("Dog", "barking"), ("Cat", "purring")]),
    ('{"sounding_objects": [{"name": "Train", "sound_description": "rumbling"}, {"name": "Bell", "sound_description": "ringing"}]}',
     [("Train", "rumbling"), ("Bell", "ringing")]),
    # real replies from public issue threads (the shapes verbatim, object lists):
    # ollama/ollama#4878 (llava:latest asked for JSON)
    ('{"objects_left_to_right": ["milk carton", "coffee mug", "cereal box", "red can of soup"]} ',
     [("milk carton", "milk carton"), ("coffee mug", "coffee mug"), ("cereal box", "cereal box")]),
    # QwenLM/Qwen3-VL#1720 (repeated keys in one object, cut off by max_new_tokens)
    ('{\n  "object_name": "monitor",\n  "bbox": [195, 138, 617, 480],\n  "object_name": "laptop",\n  "bbox": [663, 399, 917, 657],\n  "object_name": "keyboard",\n  "bbox": [254, 584, 569, 657],\n  "object_name": "mouse",\n  "bbox": [581, 587, 655, 65',
     [("monitor", "monitor"), ("laptop", "laptop"), ("keyboard", "keyboard")]),
    # lettered and parenthesised lists
    ("a) Dog: barking\nb) Cat: meowing", [("Dog", "barking"), ("Cat", "meowing")]),
    ("(1) Waves - crashing\n(2) Gulls - crying", [("Waves", "crashing"), ("Gulls", "crying")]),
    ("A. Train - rumbling\nB. Whistle - blowing", [("Train", "rumbling"), ("Whistle", "blowing")]),
    # key-value blocks (CogVLM / Idefics answer field by field)
    ("Object: Dog\nSound: barking\n\nObject: Car\nSound: honking", [("Dog", "barking"), ("Car", "honking")]),
    ("**Object 1:** Dog\n**Sound:** barking\n**Object 2:** Car\n**Sound:** honking", [("Dog", "barking"), ("Car", "honking")]),
    ("1. Dog - barking\n2. Dog - barking\n3. Cat - meowing", [("Dog", "barking"), ("Cat", "meowing")]),
]


@pytest.mark.parametrize("reply, expected", REPLIES)
def test_real_looking_replies(reply, expected):
    result = parse_concepts(reply)
    assert result.error is None
    assert [(c.object, c.sound) for c in result.concepts] == expected
    # default template "{line}": the query holds the object and the sound (never the sound alone)
    assert all(c.object in c.text and c.sound in c.text for c in result.concepts)


@pytest.mark.parametrize("reply, text", [
    ("1. Car - horn", "Car - horn"), ("1.Clock:ticking", "Clock:ticking"), ("- **Dog**: barking.", "Dog: barking"),
    ('[{"object": "Car", "sound": "horn"}]', "Car - horn"), ("Lawn mower", None)])
def test_default_query_is_the_line_as_written_without_its_marker(reply, text):
    r = parse_concepts(reply)
    assert (r.concepts[0].text if r.concepts else None) == text


def test_more_than_three_items_keeps_three_and_records_it():
    r = parse_concepts("\n".join(f"{i}. Thing{i} - noise {i}" for i in range(1, 7)))
    assert [c.object for c in r.concepts] == ["Thing1", "Thing2", "Thing3"] and r.items_found == 6


@pytest.mark.parametrize("reply", ["", "   ", None, "The image shows a calm landscape with no sounds.", "I cannot help with that.",
                                   "Note: this image has no sound sources.", "I'm sorry: I cannot identify sounds here.",
                                   "Description: a logo on a white background", "The image shows a dog, a cat and a bird.",
                                   "There is a quiet street - nothing moves."])
def test_replies_without_a_list_are_parse_errors(reply):
    r = parse_concepts(reply)
    assert r.concepts == [] and r.error.startswith("parse_error:")


def test_text_template():
    (c,) = parse_concepts("1. Dog - barking", template="{object} {sound}").concepts
    assert c.text == "Dog barking"
    assert parse_concepts("1. Dog - barking", template="{sound}").concepts[0].text == "barking"
    assert parse_concepts("1. Dog - barking", template="the sound of {line}").concepts[0].text == "the sound of Dog - barking"


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


STRUCTURAL = st.sampled_from(list("[]{}()'\"`:,-.*\n ") + ["```", "```json\n", "1.", "a)", "Object:", "Sound:", '"name":'])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400), st.lists(st.one_of(STRUCTURAL, WORD), max_size=60).map("".join)))
def test_property_never_raises_and_is_bounded(text):
    r = parse_concepts(text)
    assert (r.error is None) == bool(r.concepts)
    assert len(r.concepts) <= 3 and all(c.object and c.text for c in r.concepts)
