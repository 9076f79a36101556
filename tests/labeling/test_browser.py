"""The labeling page in a real browser (headless Chromium), served by `raylhf label` as a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from raylhf.labeling import store
from raylhf.labeling.server import shown_order
from tests.labeling import browser
from tests.labeling.conftest import REPO, TOKENS, Client, make_items

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium():
    driver = browser.start_chromium()
    yield driver
    browser.stop_chromium(driver)


def sign_in(driver, port: int, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"http://127.0.0.1:{port}/?token={token}")
    browser.wait(driver, lambda d: d.current_url == f"http://127.0.0.1:{port}/" and browser.item_ready(d))


def keys(driver, *sequence) -> None:
    ActionChains(driver).send_keys(*sequence).perform()


def likert_by_keys(driver, scores: list[int]) -> None:
    """From the top card down: Shift+digit scores the focused card, ArrowDown goes to the next."""
    browser.cards(driver)[0].click()
    actions = ActionChains(driver)
    for n, score in enumerate(scores):
        actions.key_down(Keys.SHIFT).send_keys(str(score)).key_up(Keys.SHIFT)
        if n + 1 < len(scores):
            actions.send_keys(Keys.ARROW_DOWN)
    actions.perform()


def submitted(driver, seq: int) -> None:
    browser.wait(driver, lambda d: browser.status(d).startswith(f"saved (#{seq},"))


def progress(driver) -> str:
    return driver.find_element(By.ID, "progress").text


def drag(driver, card, onto, above: bool) -> None:
    """Drag `card` by its handle with pointer events (mouse) to just above or below the middle of `onto`."""
    handle = card.find_element(By.CSS_SELECTOR, ".handle")
    dy = -onto.size["height"] // 2 + 4 if above else onto.size["height"] // 2 - 4
    ActionChains(driver).click_and_hold(handle).move_by_offset(0, 5).move_to_element_with_offset(onto, 0, dy) \
        .pause(0.05).release().perform()


def touch_drag(driver, card, onto) -> None:
    """The same drag with a touch pointer: pointer events serve mouse and finger alike."""
    finger = PointerInput(interaction.POINTER_TOUCH, "finger")
    actions = ActionBuilder(driver, mouse=finger)
    actions.pointer_action.move_to(card.find_element(By.CSS_SELECTOR, ".handle")).pointer_down() \
        .move_to(onto, 0, 5).move_to(onto, 0, onto.size["height"] // 2 - 4).pointer_up()
    actions.perform()


def test_two_labelers_rank_by_keys_and_drag_through_undo_reload_and_a_killed_server(
        chromium, tmp_path, label_process):
    run = tmp_path / "runs" / "demo"
    folder = store.labeling_dir(run / "data" / "comparisons.jsonl")
    items = make_items(4, k=4)
    store.write_batch(folder, items)
    (tmp_path / "labelers.json").write_text(json.dumps(TOKENS))
    assert store.assignments(items, list(TOKENS), 0.99) == {"alice": ["p0", "p1", "p2", "p3"],
                                                            "bob": ["p0", "p1", "p2", "p3"]}
    server = label_process(run, f"label.labelers={tmp_path / 'labelers.json'}", "label.overlap=0.99").start()
    driver = chromium
    sign_in(driver, server.port, TOKENS["alice"])
    assert progress(driver) == "0 done · 4 remaining of 4"
    order = shown_order("alice", "p0", 4)
    assert browser.shown_texts(driver) == [items[0].responses[i] for i in order]

    # p0 by keys: C to the top (place 1), A tied with it, then scores; a metadata box ticked.
    keys(driver, Keys.ARROW_DOWN, Keys.ARROW_DOWN, "1", Keys.ARROW_DOWN, "t")
    assert [c.get_attribute("data-pos") for c in browser.cards(driver)] == ["2", "0", "1", "3"]
    likert_by_keys(driver, [7, 6, 3, 1])
    last = browser.cards(driver)[3]
    last.find_element(By.CSS_SELECTOR, ".meta summary").click()
    last.find_element(By.CSS_SELECTOR, "input[data-field=hallucination]").click()
    keys(driver, Keys.ENTER)
    submitted(driver, 1)
    assert progress(driver) == "1 done · 3 remaining of 4"

    # p1 by drag: the bottom card to the top, then the third to the bottom; scores by clicks, submit by click.
    cards = browser.cards(driver)
    drag(driver, cards[3], cards[0], above=True)
    cards = browser.cards(driver)
    drag(driver, cards[2], cards[3], above=False)
    assert [c.get_attribute("data-pos") for c in browser.cards(driver)] == ["3", "0", "2", "1"]
    for card, score in zip(browser.cards(driver), [6, 5, 4, 2]):
        card.find_element(By.CSS_SELECTOR, f".likert button[data-score='{score}']").click()
    driver.find_element(By.ID, "submit").click()
    submitted(driver, 2)

    # p2: half-ranked, reloaded: the same item in the same order; skipped, undone, flagged instead.
    p2_texts = browser.shown_texts(driver)
    keys(driver, "4")
    driver.refresh()
    browser.wait(driver, browser.item_ready)
    assert browser.shown_texts(driver) == p2_texts and progress(driver) == "2 done · 2 remaining of 4"
    driver.find_element(By.CSS_SELECTOR, "#other summary").click()
    driver.find_element(By.ID, "skip-reason").send_keys("needs a domain expert")
    driver.find_element(By.ID, "skip").click()
    submitted(driver, 3)
    browser.cards(driver)[0].click()
    keys(driver, "u")
    submitted(driver, 4)
    assert browser.shown_texts(driver) == p2_texts and progress(driver) == "2 done · 2 remaining of 4"
    # the undone answer is back to be changed: the skip's reason is filled in
    assert driver.find_element(By.ID, "skip-reason").get_attribute("value") == "needs a domain expert"
    driver.find_element(By.CSS_SELECTOR, "#flags input[value=bad_prompt]").click()
    driver.find_element(By.ID, "flag").click()
    submitted(driver, 5)

    # The server dies (SIGKILL) after four acknowledged answers and comes back: alice goes on at p3.
    server.restart()
    driver.refresh()
    browser.wait(driver, browser.item_ready)
    assert progress(driver) == "3 done · 1 remaining of 4"
    assert browser.shown_texts(driver) == [items[3].responses[i] for i in shown_order("alice", "p3", 4)]
    cards = browser.cards(driver)
    touch_drag(driver, cards[0], cards[3])  # the top card to the bottom, with a finger
    assert [c.get_attribute("data-pos") for c in browser.cards(driver)] == ["1", "2", "3", "0"]
    likert_by_keys(driver, [5, 5, 4, 3])
    # While the server is down an answer is not "saved"; once it is back the same page saves it.
    server.kill()
    keys(driver, Keys.ENTER)
    browser.wait(driver, lambda d: browser.status(d).startswith("not saved"))
    assert all("ERR_CONNECTION_REFUSED" in e for e in browser.errors_in_console(driver))  # that one, nothing else
    server.start()
    keys(driver, Keys.ENTER)
    submitted(driver, 6)
    assert driver.find_element(By.ID, "done").is_displayed()

    # bob ranks all four as shown, scoring down the list.
    sign_in(driver, server.port, TOKENS["bob"])
    for seq in range(7, 11):
        likert_by_keys(driver, [7, 5, 3, 1])
        keys(driver, Keys.ENTER)
        submitted(driver, seq)
    assert browser.errors_in_console(driver) == []

    events = store.read_events(folder)
    assert [(e["seq"], e["event"], e["labeler"], e["item_id"]) for e in events] == [
        (1, "rank", "alice", "p0"), (2, "rank", "alice", "p1"), (3, "skip", "alice", "p2"),
        (4, "undo", "alice", "p2"), (5, "flag", "alice", "p2"), (6, "rank", "alice", "p3"),
        *((seq, "rank", "bob", f"p{seq - 7}") for seq in range(7, 11)),
    ]

    def by_pos(event: dict, values: list) -> list:  # values per shown position -> per batch index
        return [values[event["shown"].index(i)] for i in range(4)]

    p0, p1, skip, _, flag, p3 = events[:6]
    assert p0["shown"] == shown_order("alice", "p0", 4)
    assert p0["ranks"] == by_pos(p0, [1, 2, 1, 3]) and p0["likert"] == by_pos(p0, [6, 3, 7, 1])
    assert p0["metadata"]["hallucination"] == by_pos(p0, [False, False, False, True])
    assert not any(any(v) for f, v in p0["metadata"].items() if f != "hallucination")
    assert p1["ranks"] == by_pos(p1, [2, 4, 3, 1]) and p1["likert"] == by_pos(p1, [5, 2, 4, 6])
    assert skip["reason"] == "needs a domain expert" and flag["flags"] == ["bad_prompt"]
    assert p3["ranks"] == by_pos(p3, [4, 1, 2, 3]) and p3["likert"] == by_pos(p3, [3, 5, 5, 4])
    assert all(0 < e["seconds"] < 60 for e in events if e["event"] != "undo")

    rows = store.comparisons(folder)
    assert [(r.prompt_id, r.labeler) for r in rows] == [
        ("p0", "alice"), ("p0", "bob"), ("p1", "alice"), ("p1", "bob"), ("p2", "bob"), ("p3", "alice"), ("p3", "bob")]
    alice_p0 = rows[0]
    a, b, c, d = p0["shown"]  # batch indices of the responses shown as A, B, C, D
    assert alice_p0.ranking == [min(c, a), max(c, a), b, d] and alice_p0.tied == [True, False, False]
    for row, event in zip([rows[1], rows[3], rows[4], rows[6]], events[6:]):  # bob: as shown, no ties
        assert row.ranking == event["shown"] and row.tied == [False] * 3

    stats = subprocess.run([sys.executable, "-m", "raylhf", "label", "--stats", "--json",
                            f"output_dir={run.parent}", "name=demo", f"label.labelers={tmp_path / 'labelers.json'}",
                            "label.overlap=0.99"], capture_output=True, text=True, cwd=REPO, check=True)
    report = json.loads(stats.stdout)
    assert report["labelers"]["alice"] | {"median_seconds": None} == {
        "items": 4, "ranked": 3, "skips": 0, "flags": 1, "median_seconds": None}
    assert report["agreement"]["items"] == 3 and report["agreement"]["overall"]["pairs"] > 0
    (browser.artifacts() / "label-k4-stats.json").write_text(stats.stdout)


def test_model_text_shows_literally_and_runs_nothing(chromium, tmp_path, label_process):
    run = tmp_path / "runs" / "demo"
    folder = store.labeling_dir(run / "data" / "comparisons.jsonl")
    hostile = ["<script>alert(1)</script>", '<img src=x onerror="window.__xss=1;alert(2)">',
               "</div><b onmouseover=alert(3)>bold</b>", "plain"]
    item = make_items(1)[0]
    item.prompt, item.responses = '<iframe src="javascript:alert(4)"></iframe> Say hi', hostile
    store.write_batch(folder, [item])
    server = label_process(run).start()  # no labelers file: one labeler `local`, 127.0.0.1 only
    token = (folder / "local.token").read_text().strip()
    driver = chromium
    sign_in(driver, server.port, token)
    assert sorted(browser.shown_texts(driver)) == sorted(hostile)
    assert driver.find_element(By.ID, "prompt").text == item.prompt
    for tag in ("img", "iframe", "b"):
        assert driver.find_elements(By.CSS_SELECTOR, f"main {tag}") == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.accept()
    assert driver.execute_script("return window.__xss") is None
    assert browser.errors_in_console(driver) == []

    # The same server refuses a request without its token, a cross-origin write and an oversized body.
    anonymous = Client(server.port)
    assert anonymous.request("GET", "/")[0] == 403 and anonymous.get("/api/state")[0] == 403
    local = Client(server.port, token)
    body = {"item_id": item.item_id, "ranks": [1, 2, 3, 4], "likert": [1, 1, 1, 1], "seconds": 1}
    assert local.post("/api/rank", body, {"Origin": "http://attacker.example"})[0] == 403
    assert local.post("/api/rank", {**body, "note": "x" * 70000})[0] == 413
    # and from the page itself, a fetch past the cap is refused too
    status = driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/api/rank', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({note: 'x'.repeat(70000)})}).then(r => done(r.status));")
    assert status in (403, 413)  # no CSRF header: refused before the size is even looked at
    assert store.read_events(folder) == []


K9_RESPONSES = [
    "Autumn wind rises —\nred maple leaves let go and\nthe river takes them.",
    "Leaves fall. It is autumn. The end.",
    "Here is a haiku about autumn:\n\nCrisp air, amber light,\ngeese write their long goodbye\nacross the grey sky.",
    "Golden fields at dusk\nthe scarecrow's shadow grows long\ncrows ignore it all",
    "I cannot write poems.",
    "Autumn moon so bright / silver on the quiet pond / a frog jumps — splash — gone",
    "Pumpkin spice latte\nsweater weather has arrived\nmy wallet is sad",
    ("Autumn is a season that occurs between summer and winter. In the Northern Hemisphere it begins around "
     "September 22 and ends around December 21. During autumn, the days grow shorter and the temperatures "
     "drop. Many trees shed their leaves, which change colour from green to yellow, orange and red before "
     "falling. Farmers harvest crops such as wheat, corn and pumpkins. Many animals prepare for winter by "
     "gathering food or migrating to warmer places.\n\n" * 2).strip(),
    "rain on the tin roof\nthe last peach rots on the branch\nno one comes to pick",
]


def test_nine_responses_ranked_with_a_tie_by_keyboard_alone(chromium, tmp_path, label_process):
    run = tmp_path / "runs" / "demo"
    folder = store.labeling_dir(run / "data" / "comparisons.jsonl")
    item = store.BatchItem(item_id="haiku", prompt_id="haiku", prompt="Write a haiku about autumn.", messages=None,
                           responses=K9_RESPONSES, response_sources=["sft T=1.0", "round1 T=0.7"] * 4 + ["sft T=1.0"],
                           round=1, source="round1+sft")
    store.write_batch(folder, [item])
    server = label_process(run).start()
    driver = chromium
    sign_in(driver, server.port, (folder / "local.token").read_text().strip())
    order = shown_order("local", "haiku", 9)
    best = [0, 2, 3, 5, 8, 6, 1, 4, 7]  # batch indices, best first; 3 as good as 2 (a tie)
    # Keys only. The page opens with the top card focused; `?` shows the key list, Esc closes it.
    keys(driver, "?")
    assert driver.find_element(By.ID, "help").is_displayed()
    keys(driver, Keys.ESCAPE)
    focused = 0
    for place, index in enumerate(best):  # walk to the card of each place in turn and press the place's number
        at = [order[int(c.get_attribute("data-pos"))] for c in browser.cards(driver)].index(index)
        step = Keys.ARROW_DOWN if at > focused else Keys.ARROW_UP
        keys(driver, *([step] * abs(at - focused)), str(place + 1))
        focused = place
    keys(driver, Keys.ARROW_UP * 8, Keys.ARROW_DOWN * 2, "t")  # third place tied with the second
    likert_keys = ActionChains(driver).send_keys(Keys.ARROW_UP * 8)
    for score in [7, 6, 6, 5, 5, 3, 2, 1, 2]:
        likert_keys.key_down(Keys.SHIFT).send_keys(str(score)).key_up(Keys.SHIFT).send_keys(Keys.ARROW_DOWN)
    likert_keys.send_keys(Keys.ARROW_UP * 8).perform()
    assert [order[int(c.get_attribute("data-pos"))] for c in browser.cards(driver)] == best
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1100, height + 150)  # the whole page in the picture (the README shows it)
    driver.save_screenshot(str(browser.artifacts() / "label-k9.png"))
    driver.set_window_size(1100, 1400)
    keys(driver, Keys.ENTER)
    submitted(driver, 1)
    keys(driver, "u")  # undo: the ranking comes back as it was (order, tie, scores), Enter saves it again
    submitted(driver, 2)
    restored = [order[int(c.get_attribute("data-pos"))] for c in browser.cards(driver)]
    assert restored[:1] + sorted(restored[1:3]) + restored[3:] == best  # inside a tie any order is the same
    assert [c.get_attribute("class") for c in browser.cards(driver)].count("response tied") == 1
    keys(driver, Keys.ENTER)
    submitted(driver, 3)
    event = store.read_events(folder)[-1]
    ranks = [1, 2, 2, 3, 4, 5, 6, 7, 8]
    assert event["ranks"] == [ranks[best.index(i)] for i in range(9)]
    [row] = store.comparisons(folder)
    assert row.ranking == [0, 2, 3, 5, 8, 6, 1, 4, 7] and row.tied == [False, True, *[False] * 6]
    assert row.round == 1 and row.source == "round1+sft" and row.labeler == "local"
    stats = subprocess.run([sys.executable, "-m", "raylhf", "label", "--stats", "--json",
                            f"output_dir={run.parent}", "name=demo"], capture_output=True, text=True, cwd=REPO)
    assert json.loads(stats.stdout)["sources"]["sft T=1.0"]["responses"] == 5
    (browser.artifacts() / "label-k9-stats.json").write_text(stats.stdout)
