"""The Search-R1 text protocol: instruction template, tags, and how retrieved passages are shown.

Every stage that writes or reads trajectories (QA prep, cold start, rollout, rewards, evaluation)
takes these strings from here, so the format cannot drift between training and evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, SEARCH_OPEN, SEARCH_CLOSE, INFO_OPEN, INFO_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# Generation stops after either of these; the rollout then retrieves or finishes.
STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)

# Search-R1's instruction (scripts/data_process/nq_search.py, template "base"), verbatim.
SEARCH_R1_TEMPLATE = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)

# Baselines for evaluation: answer directly, or answer from passages retrieved for the question.
DIRECT_TEMPLATE = (
    "Answer the given question. Provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)
RAG_TEMPLATE = (
    "Answer the given question using the retrieved information. Provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>.\n"
    "<information>{context}</information>\nQuestion: {question}\n"
)

# A short instruction for policies trained from scratch (the CPU `micro` profile): the protocol is
# learnt from the cold start, not read from the instruction, and every prompt token costs CPU time.
COMPACT_TEMPLATE = "Search with <search> query </search>, answer with <answer> answer </answer>. Question: {question}\n"

TEMPLATES = {
    "search_r1": SEARCH_R1_TEMPLATE,
    "compact": COMPACT_TEMPLATE,
    "direct": DIRECT_TEMPLATE,
    "rag": RAG_TEMPLATE,
}

# Shown to the policy after a turn that neither searched nor answered (Search-R1's wording).
INVALID_ACTION_MESSAGE = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
    "</search>. If I want to give the final answer, I should put the answer between <answer> and "
    "</answer>. Let me try again.\n"
)


def make_prompt(question: str, template: str = "search_r1", context: str = "") -> str:
    """Fill an instruction template; ``template`` is a name in TEMPLATES or a format string."""
    question = question.strip()
    if not question:
        raise ValueError("empty question")
    fmt = TEMPLATES.get(template, template)
    if "{question}" not in fmt:
        raise ValueError(f"template {template!r} has no {{question}} placeholder")
    if not question.endswith("?"):  # as Search-R1's data prep does
        question += "?"
    return fmt.format(question=question, context=context)


def render_prompt(tokenizer, content: str) -> str:
    """The prompt text a policy sees: a user turn plus the assistant header through the tokenizer's chat
    template when it has one, else ``content`` unchanged."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return content


def encode_prompt(tokenizer, content: str) -> list[int]:
    """Prompt token ids, identical for the cold start and the rollout (no special tokens added)."""
    return tokenizer(render_prompt(tokenizer, content), add_special_tokens=False).input_ids


def split_title(contents: str) -> tuple[str, str]:
    """FlashRAG passages are ``"Title"\\ntext``; return (title, text) with the quotes removed."""
    title, _, text = contents.partition("\n")
    return title.strip().strip('"'), text.strip()


def format_passages(contents: Sequence[str]) -> str:
    """Render retrieved passages the way Search-R1 shows them: ``Doc i(Title: t) text`` lines."""
    lines = []
    for i, c in enumerate(contents, start=1):
        title, text = split_title(c)
        lines.append(f"Doc {i}(Title: {title}) {text}\n")
    return "".join(lines)


def information_block(contents: Sequence[str]) -> str:
    """The observation appended after a search (masked out of every loss)."""
    return f"\n\n{INFO_OPEN}{format_passages(contents)}{INFO_CLOSE}\n\n"
