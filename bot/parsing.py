"""What people type to tunebot, read into plain data: `/tune` commands, thread replies, pasted YAML.

Pure functions, no Slack calls. Text arrives as Slack sends it (`&amp;`, `<https://…|label>`,
`<@U123>`, curly quotes from the composer's smart punctuation); quoting works the way people
type it in a shell (`dataset="alpaca zh"`), and a mistake is a `UserError` naming the problem and
showing a corrected example.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runners.errors import UserError, shorten
from runners.kinds import Kind, submittable

COMMAND = "/tune"


@dataclass(frozen=True)
class CommandSpec:
    """One `/tune` subcommand: how it is written, what it takes, and one example."""

    name: str
    usage: str
    summary: str
    example: str
    min_args: int = 0
    max_args: int = 0
    job_arg: bool = False  # the first positional argument is a job id
    pairs: bool = False  # key=value settings allowed
    model_instead_of_job: bool = False  # `model=PATH` may stand for the job


_SPECS = [
    CommandSpec(
        "compare",
        "compare [dataset=NAME] [JOB …]",
        "Leaderboard of an eval set: every evaluated model (base models too) by ROUGE-L, "
        "the hyperparameters that differ, a bar chart",
        "compare dataset=eval 12 15",
        min_args=0,
        max_args=20,
        pairs=True,
    ),
    CommandSpec(
        "key",
        "key JOB",
        "Your deployment's API key and chat link again (only you see it)",
        "key 15",
        min_args=1,
        max_args=1,
        job_arg=True,
    ),
    CommandSpec(
        "undeploy", "undeploy JOB", "Stop a deployment", "undeploy 15", min_args=1, max_args=1, job_arg=True
    ),
    CommandSpec(
        "status",
        "status [JOB]",
        "One job in detail, or what runs now",
        "status 12",
        min_args=0,
        max_args=1,
        job_arg=True,
    ),
    CommandSpec("jobs", "jobs [all]", "Recent jobs and the queue", "jobs", min_args=0, max_args=1),
    CommandSpec(
        "cancel",
        "cancel JOB",
        "Stop a queued or running job",
        "cancel 12",
        min_args=1,
        max_args=1,
        job_arg=True,
    ),
    CommandSpec(
        "resume",
        "resume JOB",
        "Continue a stopped train job from its last checkpoint",
        "resume 12",
        min_args=1,
        max_args=1,
        job_arg=True,
    ),
    CommandSpec("datasets", "datasets", "Registered datasets", "datasets"),
    CommandSpec(
        "dataset add",
        "dataset add NAME",
        "Register a JSON/JSONL file shared with this message (or the next one you share)",
        "dataset add support_tickets",
        min_args=1,
        max_args=1,
        pairs=True,
    ),
    CommandSpec(
        "schedule daily",
        "schedule daily HH:MM [TZ]",
        "A digest of this channel's jobs every day",
        "schedule daily 09:00 Asia/Shanghai",
        min_args=1,
        max_args=2,
    ),
    CommandSpec(
        "schedule weekly",
        "schedule weekly DAY HH:MM [TZ]",
        "A digest every week",
        "schedule weekly mon 09:00",
        min_args=2,
        max_args=3,
    ),
    CommandSpec(
        "schedule cron",
        'schedule cron "MIN HOUR DAY MONTH WEEKDAY" [TZ]',
        "A digest on a cron schedule",
        'schedule cron "0 9 * * 1-5"',
        min_args=1,
        max_args=6,  # the five fields may come unquoted, then a time zone
    ),
    CommandSpec("schedule list", "schedule list", "This channel's digests", "schedule list"),
    CommandSpec(
        "schedule off",
        "schedule off [ID]",
        "Stop a digest (all of this channel's without ID)",
        "schedule off 3",
        min_args=0,
        max_args=1,
    ),
    CommandSpec("help", "help [COMMAND]", "This help", "help train", min_args=0, max_args=2),
]


def kind_spec(kind: Kind) -> CommandSpec:
    """A job kind's subcommand, from its declaration (runners/kinds/): `eval JOB …`, `train [preset] …`."""
    return CommandSpec(
        kind.name,
        f"{kind.name} {kind.usage}".strip(),
        kind.summary or f"Start a {kind.name} job",
        f"{kind.name} {kind.example}".strip(),
        min_args=0,
        max_args=1,
        job_arg=kind.from_job,
        pairs=True,
        model_instead_of_job=kind.from_job,
    )


class _Subcommands(Mapping[str, CommandSpec]):
    """Every `/tune` subcommand: each job kind the engine declares (asked each time, so a kind
    registered later is a command too), then the fixed ones (which keep their word: a kind named
    `status` would not replace the command)."""

    def _all(self) -> dict[str, CommandSpec]:
        fixed = {spec.name: spec for spec in _SPECS}
        return {**{kind.name: kind_spec(kind) for kind in command_kinds()}, **fixed}

    def __getitem__(self, name: str) -> CommandSpec:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


SUBCOMMANDS: Mapping[str, CommandSpec] = _Subcommands()
# Words that need a second word, and what that second word may be.
GROUPS: dict[str, tuple[str, ...]] = {}
for _spec in _SPECS:
    if " " in _spec.name:
        _group, _sub = _spec.name.split(" ", 1)
        GROUPS[_group] = (*GROUPS.get(_group, ()), _sub)
ALIASES = {"dataset list": "datasets", "?": "help", "ls": "jobs", "schedules": "schedule list"}


def command_kinds() -> list[Kind]:
    """The job kinds that are `/tune` commands: every kind people may ask for whose name no fixed
    command, command group (`dataset`, `schedule`) or alias (`ls`, `?`) already holds — those keep
    their word. The one place this is decided (help, the parser, thread replies, the use cases)."""
    taken = {spec.name.split(" ")[0] for spec in _SPECS} | set(GROUPS) | set(ALIASES)
    return [kind for kind in submittable() if kind.name not in taken]


def thread_commands() -> tuple[str, ...]:
    """In a job's thread, a reply that is just one of these words (plus key=value settings) acts on
    it: the kinds that start from a job (`eval`, `export`, …) and the verbs on a job."""
    from_job = tuple(kind.name for kind in command_kinds() if kind.from_job)
    return ("status", "cancel", *from_job, "undeploy", "resume")


def takes_yaml(name: str) -> bool:
    """Does the subcommand `name` take a pasted LLaMA-Factory YAML (`train`)?"""
    return any(kind.name == name and kind.takes_yaml for kind in submittable())

# Only when the bot is @-mentioned (in a deployed model's thread "help" may be a chat turn).
THREAD_COMMANDS_MENTIONED = ("help",)


@dataclass(frozen=True)
class Command:
    """A parsed `/tune …`: `name` is the subcommand ("train", "dataset add", "schedule daily")."""

    name: str
    args: list[str] = field(default_factory=list)
    pairs: dict[str, str] = field(default_factory=dict)
    yaml: str | None = None  # a pasted LLaMA-Factory YAML (fences removed), for the engine to read

    @property
    def job(self) -> str | None:
        """The job id this command names ("12"), when it takes one and got one."""
        spec = SUBCOMMANDS.get(self.name)
        return self.args[0] if spec and spec.job_arg and self.args else None

    @property
    def spec(self) -> CommandSpec:
        return SUBCOMMANDS[self.name]


@dataclass(frozen=True)
class ThreadCommand:
    """A reply in a job's thread that acts on that job (`status`, `eval dataset=x`, …)."""

    name: str
    pairs: dict[str, str] = field(default_factory=dict)
    mentioned: bool = False


# -- Slack's text format ------------------------------------------------------------------------

_LINK = re.compile(r"<((?:https?|mailto|ftp|file|s3|oss)[^<>|]*)(?:\|[^<>]*)?>")
# `<@U123> …` or `<@U123|name>: …` at the start of a message; group 1 is the user id.
LEADING_MENTION = re.compile(r"^\s*<@([UW][A-Z0-9]+)(?:\|[^>]*)?>[\s:,]*")
_FENCE = re.compile(r"```[ \t]*(?:ya?ml|YA?ML)?[ \t]*\n?(.*?)```", re.DOTALL)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+\-]*$")
_JOB = re.compile(r"^(?:#|job[-#]?)?(\d{1,12})$", re.IGNORECASE)

_DOUBLE_QUOTES = '"“”„«»`'
# A Chinese input method's full-width "=" and space.
_WIDE = str.maketrans({"＝": "=", "\u3000": " ", "\u00a0": " "})
_SINGLE_QUOTES = "'‘’"


def unescape_slack(text: str) -> str:
    """Undo Slack's message encoding: links back to their URL, entities back to characters."""
    text = _LINK.sub(lambda m: m.group(1).removeprefix("mailto:"), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def split_yaml(text: str) -> tuple[str, str | None]:
    """(the text without its ``` code block, the code block's content) — (text, None) if none."""
    match = _FENCE.search(text)
    if not match:
        return text, None
    rest = (text[: match.start()] + " " + text[match.end() :]).strip()
    return rest, match.group(1).strip("\n")


def extract_yaml(text: str) -> str:
    """A pasted LLaMA-Factory YAML as plain text: Slack's escaping undone, ``` fences removed.

    Pass the result to the engine (`yaml_text=`); it reads it with LLaMA-Factory's own rules.
    """
    text = unescape_slack(text)
    _rest, block = split_yaml(text)
    body = block if block is not None else text
    return body.replace("\u00a0", " ").strip("\n")


def parse_pasted_yaml(text: str) -> dict[str, Any]:
    """A pasted YAML (in a code block or not) -> its dict; a UserError says what is wrong with it."""
    from runners.llamafactory.recipes import parse_yaml_spec

    body = extract_yaml(text)
    if not body.strip():
        raise UserError(
            "The YAML is empty.", field="yaml", fix="```\nlearning_rate: 1.0e-4\nnum_train_epochs: 3\n```"
        )
    return parse_yaml_spec(body)


# -- tokens ---------------------------------------------------------------------------------------


@dataclass
class _Token:
    text: str = ""
    quoted: bool = False
    eq: int = -1  # index in `text` of the first "=" typed outside quotes


def _tokens(text: str) -> list[_Token]:
    """Split like a shell, the way people type: "…", “…”, '…' (at a word's start), `…`."""
    text = text.translate(_WIDE)
    tokens: list[_Token] = []
    current: _Token | None = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            if current is not None:
                tokens.append(current)
                current = None
            i += 1
            continue
        if current is None:
            current = _Token()
        at_word_start = current.text == "" or (current.eq == len(current.text) - 1 and not current.quoted)
        if ch in _DOUBLE_QUOTES or (ch in _SINGLE_QUOTES and at_word_start):
            closers = _SINGLE_QUOTES if ch in _SINGLE_QUOTES else "`" if ch == "`" else _DOUBLE_QUOTES[:-1]
            end = i + 1
            while end < n and text[end] not in closers:
                end += 1
            if end >= n:
                raise UserError(
                    f"A quote is not closed: {text[i : i + 30]}…",
                    fix='close it, e.g. dataset="alpaca zh"',
                )
            current.text += text[i + 1 : end]
            current.quoted = True
            i = end + 1
            continue
        if ch == "=" and current.eq < 0:
            current.eq = len(current.text)
        current.text += ch
        i += 1
    if current is not None:
        tokens.append(current)
    return tokens


def _pair_of(token: _Token) -> tuple[str, str] | None:
    if token.eq > 0:
        return token.text[: token.eq], token.text[token.eq + 1 :]
    # "dataset=alpaca zh" quoted whole, as people do: still a setting.
    if token.eq < 0 and token.quoted and "=" in token.text:
        key, value = token.text.split("=", 1)
        if _KEY.match(key):
            return key, value
    return None


def _split_args(tokens: list[_Token]) -> tuple[list[str], dict[str, str]]:
    """Positional words and key=value pairs; `key = value` and `key= value` are joined."""
    args: list[str] = []
    pairs: dict[str, str] = {}
    i = 0

    def add(key: str, value: str) -> None:
        if not _KEY.match(key):
            raise UserError(
                f"`{shorten(key)}={shorten(value)}` is not a setting: a key is a word like learning_rate.",
                field=key,
                fix="learning_rate=1e-4",
            )
        if key in pairs:
            raise UserError(
                f"`{shorten(key)}` is given twice ({shorten(pairs[key])} and {shorten(value)}).",
                field=key,
                fix=f"keep one: {shorten(key)}={shorten(value)}",
            )
        pairs[key] = value

    while i < len(tokens):
        token = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        pair = _pair_of(token)
        if pair is not None:
            key, value = pair
            # `key= value` (a bare "=" at the end, nothing quoted): the value is the next word.
            if value == "" and not token.quoted and nxt is not None and _pair_of(nxt) is None:
                add(key, nxt.text)
                i += 2
                continue
            if value == "" and not token.quoted:
                shown = shorten(key)
                raise UserError(
                    f"`{shown}=` has no value.", field=key, fix=f'{shown}=VALUE (or {shown}="" for empty)'
                )
            add(key, value)
            i += 1
            continue
        if token.eq == 0 and not token.quoted:
            # `key =value` or `key = value`
            if not args:
                raise UserError(f"`{shorten(token.text)}` has no key before the =.", fix="learning_rate=1e-4")
            key = args.pop()
            value = token.text[1:]
            if value == "":
                if nxt is None or _pair_of(nxt) is not None:
                    shown = shorten(key)
                    raise UserError(f"`{shown} =` has no value.", field=key, fix=f"{shown}=VALUE")
                value = nxt.text
                i += 1
            add(key, value)
            i += 1
            continue
        args.append(token.text)
        i += 1
    return args, pairs


def split_words(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """Words a shell already split (the command line) -> positional words and key=value pairs, by
    the rules of a `/tune` text: one key=value parser for both faces."""
    return _split_args([_Token(word, quoted=True, eq=word.find("=")) for word in words])


def parse_job_ref(text: str) -> str:
    """'12', '#12', 'job-12' -> '12'; anything else is a UserError."""
    match = _JOB.match(text.strip())
    if not match:
        raise UserError(
            f"`{shorten(text)}` is not a job id: job ids are numbers like 12 (or #12).",
            field="job",
            fix="`/tune jobs` lists them",
        )
    return str(int(match.group(1)))


def _closest(word: str, choices: list[str]) -> str | None:
    found = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return found[0] if found else None


def _command_words() -> list[str]:
    return sorted({name.split(" ")[0] for name in SUBCOMMANDS} | {a for a in ALIASES if " " not in a})


def _strip_prefix(text: str) -> str:
    """Drop a leading `/tune` (a shared file's message) or a leading @-mention of the bot."""
    text = LEADING_MENTION.sub("", text, count=1)
    stripped = text.lstrip()
    if stripped.lower().startswith(COMMAND + " ") or stripped.lower() == COMMAND:
        return stripped[len(COMMAND) :]
    return text


def parse_command(text: str) -> Command:
    """`/tune`'s text -> Command; a mistake is a UserError naming it, with a corrected example."""
    text = _strip_prefix(unescape_slack(text))
    text, yaml_text = split_yaml(text)
    tokens = _tokens(text)
    if not tokens:
        if yaml_text is not None:
            return Command("train", yaml=yaml_text)
        return Command("help")
    first = tokens[0]
    if _pair_of(first) is not None or (first.eq == 0 and not first.quoted):
        raise UserError(
            f"Start with what to do, then the settings: `{shorten(first.text)}` is a setting.",
            field="command",
            fix=f"{COMMAND} train {shorten(first.text)}",
        )
    word = first.text.lower()
    rest = tokens[1:]
    if word in GROUPS:
        sub = rest[0].text.lower() if rest else ""
        alias = ALIASES.get(f"{word} {sub}")
        if alias:
            name, rest = alias, rest[1:]
        elif sub in GROUPS[word]:
            name, rest = f"{word} {sub}", rest[1:]
        else:
            options = ", ".join(f"`{word} {s}`" for s in GROUPS[word])
            guess = _closest(sub, list(GROUPS[word])) if sub else None
            problem = (f"`{word} {shorten(sub)}` is not a command." if sub
                       else f"`{word}` needs one more word.")
            hint = f"Did you mean `{word} {guess}`?" if guess else f"It is one of {options}."
            example = SUBCOMMANDS[f"{word} {guess or GROUPS[word][0]}"].example
            raise UserError(f"{problem} {hint}", field="command", fix=f"{COMMAND} {example}")
    elif word in SUBCOMMANDS:
        name = word
    elif word in ALIASES:
        name = ALIASES[word]
    else:
        guess = _closest(word, _command_words())
        hint = f" Did you mean `{guess}`?" if guess else ""
        guess_name = ALIASES.get(guess or "", guess or "")
        if guess_name in GROUPS:
            guess_name = f"{guess_name} {GROUPS[guess_name][0]}"
        example = SUBCOMMANDS[guess_name].example if guess_name in SUBCOMMANDS else "help"
        raise UserError(
            f"`{shorten(first.text)}` is not a tunebot command.{hint}",
            field="command",
            fix=f"{COMMAND} {example}  (all commands: {COMMAND} help)",
        )

    spec = SUBCOMMANDS[name]
    args, pairs = _split_args(rest)
    if yaml_text is not None and not takes_yaml(name):
        raise UserError(
            f"A pasted YAML goes with `train`, not `{name}`.",
            field="yaml",
            fix=f"{COMMAND} train followed by the YAML in a ``` block",
        )
    if pairs and not spec.pairs:
        given = shorten(" ".join(f"{k}={v}" for k, v in pairs.items()))
        raise UserError(
            f"`{name}` takes no key=value settings (got {given}).",
            field=next(iter(pairs)),
            fix=f"{COMMAND} {spec.example}",
        )
    if len(args) > spec.max_args:
        extra = shorten(" ".join(args[spec.max_args :]))
        raise UserError(
            f"`{name}` does not take `{extra}`. Usage: {COMMAND} {spec.usage}",
            field="command",
            fix=f"{COMMAND} {spec.example}",
        )
    if len(args) < spec.min_args:
        raise UserError(
            f"`{name}` needs more. Usage: {COMMAND} {spec.usage}",
            field="command",
            fix=f"{COMMAND} {spec.example}",
        )
    if spec.model_instead_of_job and not args and "model" not in pairs:
        raise UserError(
            f"`{name}` needs a job id (or model=PATH for a base model).",
            field="job",
            fix=f"{COMMAND} {spec.example}",
        )
    if spec.job_arg and args:
        args = [parse_job_ref(args[0]), *args[1:]]
    if name == "compare":
        args = [parse_job_ref(a) for a in args]
        unknown = [k for k in pairs if k != "dataset"]
        if unknown:
            raise UserError(f"`compare` takes dataset=NAME and job ids, not `{unknown[0]}=`.",
                            field=unknown[0], fix=f"{COMMAND} {spec.example}")
    return Command(name, args, pairs, yaml_text)


def parse_thread_reply(text: str, bot_user_id: str | None = None) -> ThreadCommand | None:
    """A reply in a job's thread -> the command it is, or None when it is conversation.

    A command is one of THREAD_COMMANDS alone, optionally followed by key=value settings, with or
    without a leading @-mention of the bot; anything else (a sentence, a question) is chat text.
    A reply starting with someone else's @-mention is addressed to them, so it is chat too.
    """
    text = unescape_slack(text or "")
    mentioned = False
    match = LEADING_MENTION.match(text)
    if match:
        if bot_user_id is not None and match.group(1) != bot_user_id:
            return None
        mentioned = True
        text = text[match.end() :]
    try:
        tokens = _tokens(text.strip())
    except UserError:
        return None
    if not tokens or tokens[0].quoted:
        return None
    word = tokens[0].text.lower().rstrip(".!?。！？")
    allowed = thread_commands() + (THREAD_COMMANDS_MENTIONED if mentioned else ())
    if word not in allowed:
        return None
    try:
        args, pairs = _split_args(tokens[1:])
    except UserError:
        return None
    if args:
        return None
    return ThreadCommand(word, pairs, mentioned)
