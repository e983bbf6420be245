"""The class-folder form: reversible, portable, distinct on case-insensitive file systems; folders are matched to
classes by name, and a folder that matches none stops with a message naming it and the expected folders."""
from __future__ import annotations

import pytest
from PIL import Image

from overlock.data import ClassFolderError, ImageFolderDataset, class_name, folder_name, match_class_folders
from overlock.data.class_folders import classes_from_folders

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def make_tree(root, folders, per_class=2, size=8):
    """``root/FOLDER/i.png`` for each folder, images of distinct colours."""
    for c, folder in enumerate(folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (c * 7 % 256, i, 0)).save(root / folder / f"{i}.png")
    return root


def test_folder_form_of_names_that_cannot_be_folder_names():
    assert folder_name("T-shirt/top") == "T-shirt%2Ftop"
    assert folder_name("Ankle boot") == "Ankle boot" and folder_name("n01440764") == "n01440764"
    assert folder_name("50%") == "50%25"  # the escape character itself
    assert folder_name('a\\b:c*d?e"f<g>h|i') == "a%5Cb%3Ac%2Ad%3Fe%22f%3Cg%3Eh%7Ci"
    assert folder_name("etc.") == "etc%2E" and folder_name("..") == ".%2E"  # Windows drops a trailing dot
    assert folder_name("tab\there") == "tab%09here"
    assert folder_name("naïve/ü") == "naïve%2Fü"  # other characters stay as they are


def test_names_differing_only_in_case_get_folders_distinct_on_any_file_system():
    classes = ["Bag", "bag", "BAG", "Shoe"]
    folders = [folder_name(c, classes) for c in classes]
    assert folders == ["%42ag", "bag", "%42%41%47", "Shoe"]
    assert len({f.casefold() for f in folders}) == 4
    assert folder_name("Bag") == "Bag"  # no collision without the other names


@pytest.mark.parametrize("name", FASHION + ["Bag", "bag", "50%", "x%2Fy", "a/b/c", "end.", "end ", "ü/é"])
def test_folder_form_decodes_back_to_the_name(name):
    classes = FASHION + ["bag", "Bag"]
    assert class_name(folder_name(name, classes)) == name
    assert class_name(folder_name(name)) == name


def test_folders_typed_without_escapes_still_name_their_class():
    assert class_name("100%_cotton") == "100%_cotton"  # not an escape: the folder is the name
    assert class_name("Trouser") == "Trouser"


def test_classes_from_folders_order_and_duplicates():
    assert classes_from_folders(["b", "T-shirt%2Ftop", "a"], "x") == ["T-shirt/top", "a", "b"]
    assert classes_from_folders(["10", "2", "1"], "x") == ["1", "2", "10"]
    with pytest.raises(ClassFolderError, match="both hold class 'a/b'"):
        classes_from_folders(["a%2Fb", "a%2fb"], "x")


def test_match_is_by_name_and_unknown_folders_are_named_with_the_expected_folder():
    mapping = match_class_folders(["Trouser", "T-shirt%2Ftop", "Bag"], FASHION, "val")
    assert mapping == {"T-shirt%2Ftop": 0, "Trouser": 1, "Bag": 8}
    with pytest.raises(ClassFolderError) as err:
        match_class_folders(["T-shirt_top", "Trouser", "Dog"], FASHION, "data/val")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("data/val: 2 class folder(s) match none of the 10 classes: ")
    assert "'T-shirt_top' (class 'T-shirt/top' lives in folder 'T-shirt%2Ftop')" in message
    assert "'Dog'" in message and "'Ankle boot'" in message and "--skip-unknown-classes" in message
    assert match_class_folders(["T-shirt_top", "Trouser"], FASHION, "val", skip_unknown=True) == {"Trouser": 1}


def test_long_class_lists_are_shortened_in_the_message():
    classes = [f"c{i}" for i in range(1000)]
    with pytest.raises(ClassFolderError, match=r"'c11', \.\.\. \(1000 in all\)"):
        match_class_folders(["nope"], classes, "x")


def test_dataset_targets_follow_the_class_list_whatever_folders_are_there(tmp_path, caplog):
    """A missing, an extra and a renamed folder: the others keep their targets; the unknown ones stop the
    dataset, or are skipped and counted."""
    root = make_tree(tmp_path, ["T-shirt%2Ftop", "Bag", "Ankle boot", "Dog", "Pull-over"])  # no 'Trouser' ...
    with pytest.raises(ClassFolderError, match="'Dog', 'Pull-over' \\(class 'Pullover' lives in folder 'Pullover'\\)"):
        ImageFolderDataset(root, classes=FASHION)
    data = ImageFolderDataset(root, classes=FASHION, skip_unknown=True)
    assert data.skipped_folders == ["Dog", "Pull-over"] and data.present_classes == 3
    assert "skipping 2 class folder(s) (4 images)" in caplog.text
    targets = {path.parent.name: target for path, target in data.samples}
    assert targets == {"T-shirt%2Ftop": 0, "Bag": 8, "Ankle boot": 9}
    assert ImageFolderDataset(make_tree(tmp_path / "own", ["b", "a%2Fx"])).classes == ["a/x", "b"]
