"""Rendering for Slack: pure functions from jobs, commands and mistakes to Block Kit, no Slack calls.

`blocks` holds Slack's limits and the primitives (escaping, cutting, sections); `job` a job's messages;
`help` the help and error answers; `form` the train form; `replies` the short answers to commands.
The package re-exports the first four, so a caller writes `from bot.render import render_job_message`.
"""

from .blocks import (  # noqa: F401
    BUTTON_TEXT_MAX,
    CONTEXT_ELEMENTS_MAX,
    FALLBACK_TEXT_MAX,
    FIELD_TEXT_MAX,
    HEADER_TEXT_MAX,
    MAX_BLOCKS,
    MAX_MODAL_BLOCKS,
    MODAL_TITLE_MAX,
    OPTION_TEXT_MAX,
    SECTION_TEXT_MAX,
    code,
    code_block,
    context,
    escape,
    fields_section,
    header,
    link,
    mention,
    message,
    mrkdwn,
    plain,
    section,
    slack_date,
    slack_len,
    truncate,
    truncate_tail,
)
from .form import (  # noqa: F401
    FORM_FIELDS,
    TRAIN_FORM_CALLBACK,
    FormField,
    form_defaults,
    modal_values,
    render_modal_errors,
    render_train_modal,
)
from .help import (  # noqa: F401
    render_error,
    render_help,
)
from .job import (  # noqa: F401
    ACTION_CANCEL,
    ACTION_DEPLOY,
    ACTION_EVAL,
    ACTION_EXPORT,
    ACTION_RESUME,
    ACTION_UNDEPLOY,
    JOB_ACTIONS,
    METRIC_LABELS,
    STATE_EMOJI,
    actions_block,
    estimate_text,
    finite_number,
    job_actions,
    kind_emoji,
    kind_label,
    ordinal,
    progress_text,
    render_deploy,
    render_deploy_key,
    render_eval_result,
    render_export,
    render_failure,
    render_finished,
    render_job_message,
    render_jobs,
    render_started,
    short_model,
    speed_text,
)
