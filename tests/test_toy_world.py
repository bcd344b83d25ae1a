"""The toy world: seeded scenes, their captions, and the exact reader agreeing with the labels."""

import numpy as np

from rlft.toy import COLORS, ToyWorld, draw, read_scene


def test_scenes_are_seeded_and_backgrounds_differ_from_shapes():
    first, again = ToyWorld(seed=3).scenes(50), ToyWorld(seed=3).scenes(50)
    assert first == again and first != ToyWorld(seed=4).scenes(50)
    assert all(scene.color != scene.background for scene in first)
    assert first[0].caption == f"a {first[0].color} {first[0].shape} on a {first[0].background} background"
    image = draw(first[0])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == COLORS[first[0].background]


def test_reader_agrees_with_the_labels_on_99_percent():
    scenes = ToyWorld(seed=0).scenes(1000)
    for resolution in (32, 64):
        read = [read_scene(draw(scene, resolution)) for scene in scenes]
        agree = np.mean([r == (s.shape, s.color, s.background) for r, s in zip(read, scenes, strict=True)])
        assert agree >= 0.99, (resolution, agree)


def test_reader_tolerates_noise():
    """Decoded images are not clean: the nearest-colour reading survives moderate pixel noise."""
    rng = np.random.default_rng(0)
    scenes = ToyWorld(seed=1).scenes(300)
    noisy = [np.clip(draw(s).astype(int) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8) for s in scenes]
    agree = np.mean([read_scene(n) == (s.shape, s.color, s.background) for n, s in zip(noisy, scenes, strict=True)])
    assert agree >= 0.97


def test_word_tokenizer_gives_each_toy_word_one_token_and_survives_saving(tmp_path):
    from transformers import CLIPTokenizer

    from rlft.models import word_tokenizer
    from rlft.toy.prompts import toy_vocabulary

    tokenizer = word_tokenizer(toy_vocabulary(), max_length=16)
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    # "green" holds red's first pair and "triangle" an's: longer words' merges must rank first.
    caption = "a green triangle on a red background"
    assert loaded.tokenize(caption) == [word + "</w>" for word in caption.split()]
    ids = loaded(caption, padding="max_length", max_length=loaded.model_max_length).input_ids
    assert len(ids) == 16 and ids[0] == loaded.bos_token_id and ids[8] == loaded.eos_token_id
    assert loaded.tokenize("a dog") == ["a</w>", "d", "o", "g</w>"]  # other words fall back to bytes
