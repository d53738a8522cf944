"""What a new user meets in the first hour, said plainly: the data line explains a subset's rounding,
an export states only what the data is, and a teacher trained at another image size is refused."""
import pytest
import torch
import yaml
from PIL import Image

from trainables.models import create_model
from trainables.teacher_file import TeacherError, load_teacher, save_teacher
from tuner.best_config import write_best_config
from tuner.search import preflight
from tuner.spaces import parse_space


def _tree(root, train_per_class, test_per_class=2, size=16):
    g = torch.Generator().manual_seed(0)
    for split, counts in (("train", train_per_class), ("test", [test_per_class] * len(train_per_class))):
        for c, n in enumerate(counts):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_the_data_line_says_when_a_stratified_subset_gives_another_count_than_asked(tmp_path, capsys):
    # 3 classes of 11 training images; 10% validation takes round(1.1) = 1 of each, leaving 10 + 10 + 10.
    # train_subset 14 is the fraction 14/30 of each class: round(4.67) = 5 each, so 15 images, not 14.
    tree = _tree(tmp_path / "tree", [11, 11, 11])
    space = parse_space("smoke", {"dataset": "imagefolder", "data_dir": str(tree), "train_subset": 14,
                                  "teacher": "none", "method": "ft"})
    preflight(space)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"data: imagefolder from {tree}: 15 training / 3 validation / 6 test images, 3 classes, 16x16")
    assert line.endswith("(train_subset 14 gives 15: each class's share is rounded)")


def test_the_data_line_says_nothing_of_rounding_when_the_subset_is_exact(tmp_path, capsys):
    tree = _tree(tmp_path / "tree", [11, 11, 11])
    preflight(parse_space("smoke", {"dataset": "imagefolder", "data_dir": str(tree), "train_subset": 15,
                                    "teacher": "none", "method": "ft"}))
    assert capsys.readouterr().out.strip().endswith("3 classes, 16x16")


def test_an_export_of_real_data_leaves_out_the_generated_datas_keys_and_keeps_its_image_size(tmp_path):
    real = yaml.safe_load(write_best_config(tmp_path / "real.yaml", {"dataset": "imagefolder", "data_dir": "/d/birds",
                                                                     "density": 0.5}).read_text())
    assert "synthetic_size" not in real and "synthetic_classes" not in real
    assert real["image_size"] is None  # the images' own size
    assert real["dataset"] == "imagefolder" and real["density"] == 0.5
    resized = yaml.safe_load(write_best_config(tmp_path / "r.yaml", {"dataset": "imagefolder", "data_dir": "/d/birds",
                                                                     "image_size": 84}).read_text())
    assert resized["image_size"] == 84  # the final run fits the images to the size the search used
    generated = yaml.safe_load(write_best_config(tmp_path / "gen.yaml", {"dataset": "synthetic", "image_size": 24,
                                                                         "density": 0.5}).read_text())
    assert generated["image_size"] == 24 and generated["synthetic_classes"] == 10


def test_a_teacher_trained_at_another_image_size_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    path = save_teacher(tmp_path / "t32.pt", create_model("resnet8", 10), "resnet8", "synthetic", 10, 60.0,
                        image_size=32)
    with pytest.raises(TeacherError) as e:
        load_teacher(path, "resnet8", 10, image_size=84)
    assert str(e.value) == (f"teacher file {path} was trained on 32x32 images; this data is 84x84: train a teacher "
                            f"on it (python -m tuner.teacher ... --data-dir DIR), or give the data the teacher was "
                            f"trained on")
    load_teacher(path, "resnet8", 10, image_size=32)  # the same size loads
    unrecorded = save_teacher(tmp_path / "old.pt", create_model("resnet8", 10), "resnet8", "synthetic", 10, 60.0)
    load_teacher(unrecorded, "resnet8", 10, image_size=84)  # a file that records no size is not judged


def test_a_teacher_file_records_the_image_size_it_was_trained_at(tmp_path):
    from trainables.teacher_file import read_teacher_file
    from tuner.teacher_training import teacher_config, train_teacher

    path, _ = train_teacher(teacher_config("resnet8", "synthetic", 1, synthetic_size=60, image_size=16, batch_size=32),
                            tmp_path / "t.pt", progress=False)
    info = read_teacher_file(path)
    assert info["image_size"] == 16 and info["origin"] == "tuner.teacher" and info["epochs"] == 1
