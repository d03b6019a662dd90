"""explain_failure against log output captured from real runs.

The LLaMA-Factory logs come from `llamafactory-cli train` 0.9.5 on this CPU box (tiny local Llama,
HF_HUB_OFFLINE=1); the torchrun ones from torch's own launcher here; CUDA OOM and NCCL from an
H200 host (torch 2.11). Each is trimmed to its last part and otherwise kept byte for byte; carriage
returns (tqdm redraws) are written <CR> so they survive in this source file.
"""

import pytest

from runners.llamafactory.failures import explain_failure


def _log(text: str) -> str:
    return text.replace("<CR>", "\r")


# `llamafactory-cli train` with misspelt keys (bogus_key, learning_rat).
UNKNOWN_KEYS = _log(
    r"""[WARNING|2026-11-28 03:08:40] llamafactory.extras.misc:155 >> Version checking has been disabled, may lead to unexpected behaviors.
Traceback (most recent call last):
  File "/work/main/.venv/bin/llamafactory-cli", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/cli.py", line 24, in main
    launcher.launch()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/launcher.py", line 157, in launch
    run_exp()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 149, in run_exp
    _training_function(config={"args": args, "callbacks": callbacks})
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 71, in _training_function
    model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(args)
                                                                             ^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/hparams/parser.py", line 308, in get_train_args
    model_args, data_args, training_args, finetuning_args, generating_args = _parse_train_args(args)
                                                                             ^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/hparams/parser.py", line 262, in _parse_train_args
    return _parse_args(parser, args, allow_extra_keys=allow_extra_keys)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/hparams/parser.py", line 107, in _parse_args
    return parser.parse_dict(args, allow_extra_keys=allow_extra_keys)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/transformers/hf_argparser.py", line 383, in parse_dict
    raise ValueError(f"Some keys are not used by the HfArgumentParser: {sorted(unused_keys)}")
ValueError: Some keys are not used by the HfArgumentParser: ['bogus_key', 'learning_rat']
"""  # noqa: E501, W291
)

# dataset: nope, which dataset_info.json does not list.
UNDEFINED_DATASET = _log(
    r"""             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/cli.py", line 24, in main
    launcher.launch()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/launcher.py", line 157, in launch
    run_exp()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 149, in run_exp
    _training_function(config={"args": args, "callbacks": callbacks})
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 117, in _training_function
    run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/sft/workflow.py", line 52, in run_sft
    dataset_module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 303, in get_dataset
    dataset = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, stage)
              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 177, in _get_merged_dataset
    for dataset_name, dataset_attr in zip(dataset_names, get_dataset_list(dataset_names, data_args.dataset_dir)):
                                                         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/parser.py", line 126, in get_dataset_list
    raise ValueError(f"Undefined dataset {name} in {DATA_CONFIG}.")
ValueError: Undefined dataset nope in dataset_info.json.
"""  # noqa: E501, W291
)

# A JSON Lines dataset with a broken second line; tqdm glues its bar to the message.
BAD_JSON_DATASET = _log(
    r"""[INFO|tokenization_utils_base.py:1592] 2026-11-28 03:08:53,397 >> Offline mode: forcing local_files_only=True
[INFO|2026-11-28 03:08:53] llamafactory.data.template:144 >> Add <|eom_id|> to stop words.
[INFO|2026-11-28 03:08:53] llamafactory.data.loader:144 >> Loading dataset bad.jsonl...
<CR>Generating train split: 0 examples [00:00, ? examples/s]Failed to load JSON from file '/tmp/fx/data/bad.jsonl' with error <class 'pyarrow.lib.ArrowInvalid'>: JSON parse error: Invalid value. in row 1
<CR>Generating train split: 0 examples [00:00, ? examples/s]
Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/packaged_modules/json/json.py", line 160, in _generate_tables
    df = pandas_read_json(f)
         ^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/packaged_modules/json/json.py", line 38, in pandas_read_json
    return pd.read_json(path_or_buf, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/pandas/io/json/_json.py", line 1017, in read_json
    return json_reader.read()
           ^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/pandas/io/json/_json.py", line 1270, in read
    obj = self._read_ujson()
          ^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/pandas/io/json/_json.py", line 1320, in _read_ujson
    obj = self._get_object_parser(self.data)
          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/pandas/io/json/_json.py", line 1344, in _get_object_parser
    return FrameParser(json, **kwargs).parse()
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/pandas/io/json/_json.py", line 1501, in parse
    obj = self._parse()
          ^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/pandas/io/json/_json.py", line 1837, in _parse
    ujson_loads(json, precise_float=self.precise_float), dtype=None
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ValueError: Trailing data at position 37

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/builder.py", line 1815, in _prepare_split_single
    for _, table in generator:
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/packaged_modules/json/json.py", line 163, in _generate_tables
    raise e
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/packaged_modules/json/json.py", line 137, in _generate_tables
    pa_table = paj.read_json(
               ^^^^^^^^^^^^^^
  File "pyarrow/_json.pyx", line 364, in pyarrow._json.read_json
  File "pyarrow/error.pxi", line 155, in pyarrow.lib.pyarrow_internal_check_status
  File "pyarrow/error.pxi", line 92, in pyarrow.lib.check_status
pyarrow.lib.ArrowInvalid: JSON parse error: Invalid value. in row 1

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/work/main/.venv/bin/llamafactory-cli", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/cli.py", line 24, in main
    launcher.launch()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/launcher.py", line 157, in launch
    run_exp()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 149, in run_exp
    _training_function(config={"args": args, "callbacks": callbacks})
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 117, in _training_function
    run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/sft/workflow.py", line 52, in run_sft
    dataset_module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 303, in get_dataset
    dataset = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, stage)
              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 181, in _get_merged_dataset
    datasets[dataset_name] = _load_single_dataset(dataset_attr, model_args, data_args, training_args)
                             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 131, in _load_single_dataset
    dataset = load_dataset(
              ^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/load.py", line 1412, in load_dataset
    builder_instance.download_and_prepare(
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/builder.py", line 894, in download_and_prepare
    self._download_and_prepare(
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/builder.py", line 970, in _download_and_prepare
    self._prepare_split(split_generator, **prepare_split_kwargs)
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/builder.py", line 1702, in _prepare_split
    for job_id, done, content in self._prepare_split_single(
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/builder.py", line 1858, in _prepare_split_single
    raise DatasetGenerationError("An error occurred while generating the dataset") from e
datasets.exceptions.DatasetGenerationError: An error occurred while generating the dataset
"""  # noqa: E501, W291
)

# A sharegpt dataset whose only conversation starts with gpt.
NO_VALID_SAMPLES = _log(
    r"""[INFO|tokenization_utils_base.py:1592] 2026-11-28 03:09:00,370 >> Offline mode: forcing local_files_only=True
[INFO|2026-11-28 03:09:00] llamafactory.data.template:144 >> Add <|eom_id|> to stop words.
[INFO|2026-11-28 03:09:00] llamafactory.data.loader:144 >> Loading dataset broken.json...
<CR>Generating train split: 0 examples [00:00, ? examples/s]<CR>Generating train split: 1 examples [00:00, 139.95 examples/s]
<CR>Converting format of dataset:   0%|          | 0/1 [00:00<?, ? examples/s][WARNING|2026-11-28 03:09:00] llamafactory.data.converter:149 >> Invalid role tag in [{'from': 'gpt', 'value': 'x'}, {'from': 'human', 'value': 'y'}].
[WARNING|2026-11-28 03:09:00] llamafactory.data.converter:149 >> Skipping this abnormal example.
<CR>Converting format of dataset: 100%|██████████| 1/1 [00:00<00:00, 263.98 examples/s]
<CR>Running tokenizer on dataset:   0%|          | 0/1 [00:00<?, ? examples/s][WARNING|2026-11-28 03:09:00] llamafactory.data.processor.supervised:149 >> Dropped invalid example: []
<CR>Running tokenizer on dataset: 100%|██████████| 1/1 [00:00<00:00, 415.48 examples/s]
training example:
Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 266, in _get_preprocessed_dataset
    dataset_processor.print_data_example(next(iter(dataset)))
                                         ^^^^^^^^^^^^^^^^^^^
StopIteration

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/work/main/.venv/bin/llamafactory-cli", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/cli.py", line 24, in main
    launcher.launch()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/launcher.py", line 157, in launch
    run_exp()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 149, in run_exp
    _training_function(config={"args": args, "callbacks": callbacks})
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 117, in _training_function
    run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/sft/workflow.py", line 52, in run_sft
    dataset_module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 318, in get_dataset
    train_dict["train"] = _get_preprocessed_dataset(
                          ^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 271, in _get_preprocessed_dataset
    raise RuntimeError("Cannot find valid samples, check `data/README.md` for the data format.")
RuntimeError: Cannot find valid samples, check `data/README.md` for the data format.
"""  # noqa: E501, W291
)

# A hand-written dataset_info.json entry (alpaca defaults) for rows without `input`.
MISSING_COLUMN = _log(
    r"""[INFO|tokenization_utils_base.py:1592] 2026-11-28 03:16:57,890 >> Offline mode: forcing local_files_only=True
[INFO|2026-11-28 03:16:57] llamafactory.data.template:144 >> Add <|eom_id|> to stop words.
[INFO|2026-11-28 03:16:57] llamafactory.data.loader:144 >> Loading dataset train.json...
<CR>Generating train split: 0 examples [00:00, ? examples/s]<CR>Generating train split: 32 examples [00:00, 3374.85 examples/s]
<CR>Converting format of dataset:   0%|          | 0/32 [00:00<?, ? examples/s]<CR>Converting format of dataset:   0%|          | 0/32 [00:00<?, ? examples/s]
Traceback (most recent call last):
  File "/work/main/.venv/bin/llamafactory-cli", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/cli.py", line 24, in main
    launcher.launch()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/launcher.py", line 157, in launch
    run_exp()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 149, in run_exp
    _training_function(config={"args": args, "callbacks": callbacks})
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 117, in _training_function
    run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/sft/workflow.py", line 52, in run_sft
    dataset_module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 303, in get_dataset
    dataset = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, stage)
              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 181, in _get_merged_dataset
    datasets[dataset_name] = _load_single_dataset(dataset_attr, model_args, data_args, training_args)
                             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/loader.py", line 161, in _load_single_dataset
    return align_dataset(dataset, dataset_attr, data_args, training_args)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/converter.py", line 420, in align_dataset
    return dataset.map(
           ^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/arrow_dataset.py", line 560, in wrapper
    out: Union["Dataset", "DatasetDict"] = func(self, *args, **kwargs)
                                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/arrow_dataset.py", line 3318, in map
    for rank, done, content in Dataset._map_single(**unprocessed_kwargs):
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/arrow_dataset.py", line 3650, in _map_single
    for i, example in iter_outputs(shard_iterable):
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/arrow_dataset.py", line 3624, in iter_outputs
    yield i, apply_function(example, i, offset=offset)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/arrow_dataset.py", line 3547, in apply_function
    processed_inputs = function(*fn_args, *additional_args, **fn_kwargs)
                       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/data/converter.py", line 97, in __call__
    if self.dataset_attr.query and example[self.dataset_attr.query]:
                                   ~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/datasets/formatting/formatting.py", line 282, in __getitem__
    value = self.data[key]
            ~~~~~~~~~^^^^^
KeyError: 'input'
"""  # noqa: E501, W291
)

# model_name_or_path: /tmp/fx/nomodel, which does not exist (HF_HUB_OFFLINE=1).
MODEL_PATH_MISSING = _log(
    r"""    resolved_config_file = cached_file(
                           ^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/transformers/utils/hub.py", line 278, in cached_file
    file = cached_files(path_or_repo_id=path_or_repo_id, filenames=[filename], **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/transformers/utils/hub.py", line 473, in cached_files
    raise OSError(f"{e}") from e
OSError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/tmp/fx/nomodel'. Use `repo_type` argument if needed.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/work/main/.venv/bin/llamafactory-cli", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/cli.py", line 24, in main
    launcher.launch()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/launcher.py", line 157, in launch
    run_exp()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 149, in run_exp
    _training_function(config={"args": args, "callbacks": callbacks})
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 117, in _training_function
    run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/sft/workflow.py", line 49, in run_sft
    tokenizer_module = load_tokenizer(model_args)
                       ^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/model/loader.py", line 93, in load_tokenizer
    raise OSError("Failed to load tokenizer.") from e
OSError: Failed to load tokenizer.
"""  # noqa: E501, W291
)

# model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct on a host without the hub.
HUB_UNREACHABLE = _log(
    r"""                          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/transformers/configuration_utils.py", line 673, in get_config_dict
    config_dict, kwargs = cls._get_config_dict(pretrained_model_name_or_path, **kwargs)
                          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/transformers/configuration_utils.py", line 728, in _get_config_dict
    resolved_config_file = cached_file(
                           ^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/transformers/utils/hub.py", line 278, in cached_file
    file = cached_files(path_or_repo_id=path_or_repo_id, filenames=[filename], **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/transformers/utils/hub.py", line 498, in cached_files
    raise OSError(
OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached files.
Check your internet connection or see how to run the library in offline mode at 'https://huggingface.co/docs/transformers/installation#offline-mode'.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/work/main/.venv/bin/llamafactory-cli", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/cli.py", line 24, in main
    launcher.launch()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/launcher.py", line 157, in launch
    run_exp()
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 149, in run_exp
    _training_function(config={"args": args, "callbacks": callbacks})
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/tuner.py", line 117, in _training_function
    run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/train/sft/workflow.py", line 49, in run_sft
    tokenizer_module = load_tokenizer(model_args)
                       ^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/llamafactory/model/loader.py", line 93, in load_tokenizer
    raise OSError("Failed to load tokenizer.") from e
OSError: Failed to load tokenizer.
"""  # noqa: E501, W291
)

# torchrun --master_port 29517 while another process listens there.
TORCHRUN_PORT_IN_USE = _log(
    r"""Traceback (most recent call last):
  File "/work/main/.venv/bin/torchrun", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 367, in wrapper
    return f(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1028, in main
    run(args)
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1019, in run
    elastic_launch(
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 194, in __call__
    return launch_agent(
           ^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 374, in launch_agent
    result = agent.run()
             ^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/metrics/api.py", line 134, in wrapper
    result = f(*args, **kwargs)
             ^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/agent/server/api.py", line 745, in run
    result = self._invoke_run(role)
             ^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/agent/server/api.py", line 916, in _invoke_run
    self._initialize_workers(self._worker_group)
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/metrics/api.py", line 134, in wrapper
    result = f(*args, **kwargs)
             ^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/agent/server/api.py", line 713, in _initialize_workers
    self._rendezvous(worker_group)
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/metrics/api.py", line 134, in wrapper
    result = f(*args, **kwargs)
             ^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/agent/server/api.py", line 528, in _rendezvous
    rdzv_info = spec.rdzv_handler.next_rendezvous()
                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/rendezvous/static_tcp_rendezvous.py", line 67, in next_rendezvous
    self._store = TCPStore(  # type: ignore[call-arg]
                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
torch.distributed.DistNetworkError: The server socket has failed to listen on any local network address. port: 29517, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use
"""  # noqa: E501, W291
)

# torchrun, 2 processes, each killed with SIGKILL (as the kernel OOM killer does).
TORCHRUN_CHILD_KILLED = _log(
    r"""W1128 03:09:21.418000 9699 torch/distributed/run.py:874] 
W1128 03:09:21.418000 9699 torch/distributed/run.py:874] *****************************************
W1128 03:09:21.418000 9699 torch/distributed/run.py:874] Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded, please further tune the variable for optimal performance in your application as needed. 
W1128 03:09:21.418000 9699 torch/distributed/run.py:874] *****************************************
E1128 03:09:22.950000 9699 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -9) local_rank: 0 (pid: 9702) of binary: /work/main/.venv/bin/python3
Traceback (most recent call last):
  File "/work/main/.venv/bin/torchrun", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 367, in wrapper
    return f(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1028, in main
    run(args)
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1019, in run
    elastic_launch(
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 194, in __call__
    return launch_agent(
           ^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
=====================================================
child.py FAILED
-----------------------------------------------------
Failures:
[1]:
  time      : 2026-11-28_03:09:22
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 9703)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 9703
-----------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_03:09:22
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -9 (pid: 9702)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 9702
=====================================================
"""  # noqa: E501, W291
)

# torchrun, 2 processes, each raising a CUDA OOM-worded RuntimeError.
TORCHRUN_CHILD_OOM = _log(
    r"""W1128 03:09:26.782000 9755 torch/distributed/run.py:874] 
W1128 03:09:26.782000 9755 torch/distributed/run.py:874] *****************************************
W1128 03:09:26.782000 9755 torch/distributed/run.py:874] Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded, please further tune the variable for optimal performance in your application as needed. 
W1128 03:09:26.782000 9755 torch/distributed/run.py:874] *****************************************
[rank0]: Traceback (most recent call last):
[rank0]:   File "/tmp/fx/child2.py", line 3, in <module>
[rank0]:     raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
[rank0]: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (simulated)
[rank1]: Traceback (most recent call last):
[rank1]:   File "/tmp/fx/child2.py", line 3, in <module>
[rank1]:     raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
[rank1]: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (simulated)
W1128 03:09:29.022000 9755 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 9758 closing signal SIGTERM
E1128 03:09:29.030000 9755 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 1 (pid: 9759) of binary: /work/main/.venv/bin/python3
Traceback (most recent call last):
  File "/work/main/.venv/bin/torchrun", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 367, in wrapper
    return f(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1028, in main
    run(args)
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1019, in run
    elastic_launch(
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 194, in __call__
    return launch_agent(
           ^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
child2.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-28_03:09:29
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 9758)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 9758
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_03:09:29
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 9759) 
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""  # noqa: E501, W291
)

# torch 2.11 on an H200: allocating more than is free.
CUDA_OOM = _log(
    r"""Traceback (most recent call last):
  File "<stdin>", line 3, in <module>
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 111.76 GiB. GPU 0 has a total capacity of 139.80 GiB of which 27.53 GiB is free. Including non-PyTorch memory, this process has 112.27 GiB memory in use. Of the allocated memory 111.76 GiB is allocated by PyTorch, and 1.08 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)
"""  # noqa: E501, W291
)

# torchrun, 2 processes, both put on cuda:0 (H200, NCCL 2.28.9).
NCCL_DUPLICATE_GPU = _log(
    r"""W1128 03:11:59.485000 439 torch/distributed/run.py:851] 
W1128 03:11:59.485000 439 torch/distributed/run.py:851] *****************************************
W1128 03:11:59.485000 439 torch/distributed/run.py:851] Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded, please further tune the variable for optimal performance in your application as needed. 
W1128 03:11:59.485000 439 torch/distributed/run.py:851] *****************************************
Traceback (most recent call last):
  File "/root/out/dup.py", line 2, in <module>
Traceback (most recent call last):
  File "/root/out/dup.py", line 2, in <module>
    dist.init_process_group("nccl", device_id=torch.device("cuda:0"))
    dist.init_process_group("nccl", device_id=torch.device("cuda:0"))
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/c10d_logger.py", line 83, in wrapper
    return func(*args, **kwargs)
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/c10d_logger.py", line 83, in wrapper
           ^^^^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/c10d_logger.py", line 97, in wrapper
    return func(*args, **kwargs)
    func_return = func(*args, **kwargs)
                             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/c10d_logger.py", line 97, in wrapper
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/distributed_c10d.py", line 1838, in init_process_group
    func_return = func(*args, **kwargs)
                  ^^^^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/distributed_c10d.py", line 1838, in init_process_group
    default_pg, _ = _new_process_group_helper(
                    ^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/distributed_c10d.py", line 2253, in _new_process_group_helper
    default_pg, _ = _new_process_group_helper(
                    ^^^^^^^^^^^^^^^^^^^^^^^^^^
    eager_backend.eager_connect_single_device(device_id)
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/distributed_c10d.py", line 2253, in _new_process_group_helper
torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:93, invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.28.9
ncclInvalidUsage: This usually reflects invalid usage of NCCL library.
Last error:
Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 60
    eager_backend.eager_connect_single_device(device_id)
torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:93, invalid usage (run with NCCL_DEBUG=WARN for details), NCCL version 2.28.9
ncclInvalidUsage: This usually reflects invalid usage of NCCL library.
Last error:
Duplicate GPU detected : rank 0 and rank 1 both on CUDA device 60
[W1128 03:12:05.118171356 ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group() was not called before program exit, which can leak resources. For more info, please see https://pytorch.org/docs/stable/distributed.html#shutdown (function operator())
[W1128 03:12:05.131555168 ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group() was not called before program exit, which can leak resources. For more info, please see https://pytorch.org/docs/stable/distributed.html#shutdown (function operator())
E1128 03:12:06.050000 439 torch/distributed/elastic/multiprocessing/api.py:986] failed (exitcode: 1) local_rank: 0 (pid: 460) of binary: /opt/torch/.venv/bin/python
Traceback (most recent call last):
  File "/opt/torch/.venv/bin/torchrun", line 10, in <module>
    sys.exit(main())
             ^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 362, in wrapper
    return f(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/run.py", line 990, in main
    run(args)
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/run.py", line 981, in run
    elastic_launch(
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/launcher/api.py", line 170, in __call__
    return launch_agent(self._config, self._entrypoint, list(args))
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/launcher/api.py", line 317, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
dup.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-28_03:12:06
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 461)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-28_03:12:06
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 460)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""  # noqa: E501, W291
)

# torchrun stopped with SIGTERM while a rank hung in a collective.
TORCHRUN_TERMINATED = _log(
    r"""W1128 03:12:10.464000 481 torch/distributed/run.py:851] 
W1128 03:12:10.464000 481 torch/distributed/run.py:851] *****************************************
W1128 03:12:10.464000 481 torch/distributed/run.py:851] Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded, please further tune the variable for optimal performance in your application as needed. 
W1128 03:12:10.464000 481 torch/distributed/run.py:851] *****************************************
[rank1]:[W1128 03:12:55.896409606 ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group() was not called before program exit, which can leak resources. For more info, please see https://pytorch.org/docs/stable/distributed.html#shutdown (function operator())
W1128 03:14:36.682000 481 torch/distributed/elastic/agent/server/api.py:739] Received 15 death signal, shutting down workers
W1128 03:14:36.683000 481 torch/distributed/elastic/multiprocessing/api.py:1012] Sending process 502 closing signal SIGTERM
Traceback (most recent call last):
  File "/opt/torch/.venv/bin/torchrun", line 10, in <module>
    sys.exit(main())
             ^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/elastic/multiprocessing/errors/__init__.py", line 362, in wrapper
    return f(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/run.py", line 990, in main
    run(args)
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/run.py", line 981, in run
    elastic_launch(
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/launcher/api.py", line 170, in __call__
    return launch_agent(self._config, self._entrypoint, list(args))
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/launcher/api.py", line 308, in launch_agent
    result = agent.run()
             ^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/elastic/metrics/api.py", line 134, in wrapper
    result = f(*args, **kwargs)
             ^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/elastic/agent/server/api.py", line 731, in run
    result = self._invoke_run(role)
             ^^^^^^^^^^^^^^^^^^^^^^
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/elastic/agent/server/api.py", line 908, in _invoke_run
    time.sleep(monitor_interval)
  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/distributed/elastic/multiprocessing/api.py", line 86, in _terminate_process_handler
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)
torch.distributed.elastic.multiprocessing.api.SignalException: Process 481 got signal: 15
"""  # noqa: E501, W291
)

# uvicorn (as under `llamafactory-cli api`) on a port already taken.
UVICORN_PORT_IN_USE = _log(
    r"""INFO:     Started server process [25956]
INFO:     Waiting for application startup.
INFO:     Application startup complete.
ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 34829): address already in use
INFO:     Waiting for application shutdown.
INFO:     Application shutdown complete.
"""  # noqa: E501, W291
)

# --- known causes, from real logs -----------------------------------------------------------------


def test_unknown_keys_are_named():
    failure = explain_failure(UNKNOWN_KEYS, 1)
    assert failure.kind == "unknown_key"
    assert failure.reason == "Unknown settings for LLaMA-Factory: `bogus_key`, `learning_rat`."
    assert "spelling" in failure.advice
    assert failure.tail.endswith(
        "ValueError: Some keys are not used by the HfArgumentParser: ['bogus_key', 'learning_rat']"
    )


def test_undefined_dataset():
    failure = explain_failure(UNDEFINED_DATASET, 1)
    assert (failure.kind, failure.reason) == ("dataset", "Dataset `nope` is not registered.")
    assert failure.tail.endswith("ValueError: Undefined dataset nope in dataset_info.json.")


def test_bad_json_names_the_file_even_when_tqdm_shares_its_line():
    failure = explain_failure(BAD_JSON_DATASET, 1)
    assert failure.kind == "dataset"
    assert failure.reason == (
        "The dataset file /tmp/fx/data/bad.jsonl is not valid JSON (JSON parse error: "
        "Invalid value. in row 1)."
    )
    # The last exception is only the wrapper DatasetGenerationError; the tail ends at the real cause.
    assert "DatasetGenerationError" not in failure.tail.splitlines()[-1]


def test_no_valid_samples_counts_the_skipped_rows():
    failure = explain_failure(NO_VALID_SAMPLES, 1)
    assert failure.kind == "dataset"
    assert (
        failure.reason == "The dataset has no usable examples: LLaMA-Factory skipped every row (1 malformed)."
    )
    assert "alternate" in failure.advice
    assert failure.tail.endswith(
        "RuntimeError: Cannot find valid samples, check `data/README.md` for the data format."
    )


def test_missing_dataset_column():
    failure = explain_failure(MISSING_COLUMN, 1)
    assert failure.reason == "The dataset has no `input` column, which its dataset_info.json entry expects."
    assert failure.tail.endswith("KeyError: 'input'")


def test_missing_model_path_names_the_path_not_the_tokenizer():
    # The last line says "Failed to load tokenizer."; the cause is the path two exceptions up.
    failure = explain_failure(MODEL_PATH_MISSING, 1)
    assert failure.kind == "model"
    assert (
        failure.reason == "The model `/tmp/fx/nomodel` was not found: it is not a folder on the runner host."
    )
    assert "Repo id must be in the form" in failure.tail.splitlines()[-1]


def test_hub_model_without_the_hub():
    failure = explain_failure(HUB_UNREACHABLE, 1)
    assert failure.kind == "model" and "huggingface.co" in failure.reason
    assert "Download the model" in failure.advice


def test_torchrun_port_in_use():
    failure = explain_failure(TORCHRUN_PORT_IN_USE, 1)
    assert (failure.kind, failure.reason) == (
        "port_in_use",
        "Port 29517 is already in use by another process.",
    )


def test_uvicorn_port_in_use():
    failure = explain_failure(UVICORN_PORT_IN_USE, 3)
    assert (failure.kind, failure.reason) == (
        "port_in_use",
        "Port 34829 is already in use by another process.",
    )


def test_torchrun_children_killed_by_sigkill_though_torchrun_exits_1():
    failure = explain_failure(TORCHRUN_CHILD_KILLED, 1)
    assert failure.kind == "killed"
    assert "possibly because the host ran out of memory" in failure.reason


def test_cause_inside_a_torchrun_child_beats_the_launcher_summary():
    failure = explain_failure(TORCHRUN_CHILD_OOM, 1)
    assert failure.kind == "cuda_oom"
    # One copy of the rank traceback, ending at the child's exception, not torchrun's summary.
    assert (
        failure.tail.splitlines()[-1]
        == "[rank0]: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"
    )
    assert "[rank1]" not in failure.tail and "ChildFailedError" not in failure.tail


def test_cuda_oom_reports_sizes_and_advice():
    failure = explain_failure(CUDA_OOM, 1)
    assert failure.kind == "cuda_oom"
    assert (
        failure.reason
        == "The GPU ran out of memory (it needed 111.76 GiB more on GPU 0, which has 139.80 GiB in all)."
    )
    assert "`batch`" in failure.advice and "`grad_accum`" in failure.advice and "`cutoff`" in failure.advice
    assert "method=qlora" in failure.advice


def test_nccl_duplicate_gpu():
    failure = explain_failure(NCCL_DUPLICATE_GPU, 1)
    assert failure.kind == "nccl"
    assert failure.reason == "Two training processes were given the same GPU, which NCCL refuses."


def test_torchrun_stopped_by_sigterm():
    failure = explain_failure(TORCHRUN_TERMINATED, 124)
    assert failure.kind == "terminated"


# --- known causes, from the messages in the libraries' sources -----------------------------------


def test_disk_full_while_saving_a_checkpoint():
    log = (
        '  File "/opt/venv/lib/python3.12/site-packages/safetensors/torch.py", line 286, in save_file\n'
        "    serialize_file(_flatten(tensors), filename, metadata=metadata)\n"
        "safetensors_rust.SafetensorError: Error while serializing: IoError(Os { code: "
        "28, kind: StorageFull, "
        'message: "No space left on device" })\n'
    )
    failure = explain_failure(log, 1)
    assert (failure.kind, failure.reason) == ("disk_full", "The disk is full (No space left on device).")
    assert "checkpoints" in failure.advice


def test_disk_full_from_python():
    assert explain_failure("OSError: [Errno 28] No space left on device\n", 1).kind == "disk_full"


def test_exit_137_without_a_message_is_a_kill():
    failure = explain_failure("[INFO|2026-11-28 03:09:00] llamafactory.train: step 10\nKilled\n", 137)
    assert failure.kind == "killed"
    assert (
        failure.reason == "The job was killed (SIGKILL), possibly because the host ran out of memory (RAM)."
    )


@pytest.mark.parametrize("code", [-9, 137])
def test_sigkill_exit_codes(code):
    assert explain_failure("loading checkpoint shards\n", code).kind == "killed"


def test_cuda_oom_wins_over_the_kill_it_caused():
    log = CUDA_OOM + "Killed\n"
    assert explain_failure(log, 137).kind == "cuda_oom"


def test_sigterm_exit_code():
    assert explain_failure("", -15).kind == "terminated"


def test_missing_metric_package():
    log = (
        "importlib.metadata.PackageNotFoundError: The 'jieba' distribution was not found "
        "and is required by this "
        "application. To fix: run `pip install jieba`.\n"
    )
    failure = explain_failure(log, 1)
    assert (failure.kind, failure.reason) == (
        "missing_package",
        "The runner host is missing the Python package `jieba`.",
    )


def test_gradio_port_in_use():
    log = (
        "OSError: Cannot find empty port in range: 7860-7860. You can specify a "
        "different port by setting the "
        "GRADIO_SERVER_PORT environment variable or passing the `server_port` parameter to `launch()`.\n"
    )
    assert explain_failure(log, 1).reason == "Port 7860 is already in use by another process."


def test_nccl_watchdog_timeout():
    log = (
        "[rank1]:[E1128 03:12:55.896409606 ProcessGroupNCCL.cpp:632] [Rank 1] Watchdog "
        "caught collective operation "
        "timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=4, NumelOut=4, Timeout(ms)=8000) ran for 8085 "
        "milliseconds before timing out.\n"
    )
    failure = explain_failure(log, 1)
    assert failure.kind == "nccl" and "timed out" in failure.reason


def test_unknown_template():
    failure = explain_failure("ValueError: Template llama4x does not exist.\n", 1)
    assert (failure.kind, failure.reason) == ("template", "There is no chat template called `llama4x`.")


def test_hub_id_that_does_not_exist():
    log = (
        "OSError: not-a-user/not-a-model is not a local folder and is not a valid model identifier listed on "
        "'https://huggingface.co/models'\n"
    )
    assert "`not-a-user/not-a-model` was not found" in explain_failure(log, 1).reason


# --- unknown causes and noise --------------------------------------------------------------------


def test_unknown_exception_is_reported_as_is():
    log = (
        "[INFO|2026-11-28 03:09:00] llamafactory.hparams.parser:523 >> Process rank: 0\n"
        "Traceback (most recent call last):\n"
        '  File "/opt/venv/lib/python3.12/site-packages/llamafactory/hparams/parser.py", '
        "line 360, in _check\n"
        '    raise ValueError("Please specify dataset for training.")\n'
        "ValueError: Please specify dataset for training.\n"
    )
    failure = explain_failure(log, 1)
    assert (failure.kind, failure.reason, failure.advice) == (
        "error",
        "Please specify dataset for training.",
        None,
    )


def test_unknown_exception_keeps_its_type_when_it_tells_something():
    failure = explain_failure("FileNotFoundError: [Errno 2] No such file or directory: '/x/y'\n", 1)
    assert failure.reason == "FileNotFoundError: [Errno 2] No such file or directory: '/x/y'."


def test_no_exception_and_no_output():
    assert explain_failure("", 2).reason == "The job exited with code 2 without an error message."
    assert explain_failure("", None).reason == "The job stopped without an error message."
    assert explain_failure("", -11).reason == "The job was killed by signal 11."


def test_progress_bars_and_warnings_are_left_out_of_the_tail():
    log = (
        "[WARNING|2026-11-28 03:08:59] llamafactory.extras.misc:155 >> Version checking has been disabled.\n"
        "/opt/venv/lib/python3.12/site-packages/torch/utils/checkpoint.py:86: "
        "UserWarning: None of the inputs "
        "have requires_grad=True. Gradients will be None\n"
        "  warnings.warn(\n"
        "  0%|          | 0/80 [00:00<?, ?it/s]<CR> 10%|█         | 8/80 [00:05<00:45,  "
        "1.58it/s]<CR> 11%|█▏        "
        "| 9/80 [00:05<00:44,  1.60it/s]\n"
        "{'loss': 1.8216, 'grad_norm': 0.52, 'learning_rate': 4.9e-05, 'epoch': 0.1}\n"
        "W1128 03:09:21.418000 9699 torch/distributed/run.py:874] *****************************************\n"
        "RuntimeError: something unexpected\n"
    ).replace("<CR>", "\r")
    failure = explain_failure(log, 1)
    assert failure.tail.splitlines() == [
        "{'loss': 1.8216, 'grad_norm': 0.52, 'learning_rate': 4.9e-05, 'epoch': 0.1}",
        "RuntimeError: something unexpected",
    ]
    assert failure.reason == "something unexpected."


def test_warnings_do_not_count_as_causes():
    log = (
        "[WARNING|2026-11-28 03:09:00] llamafactory.model.model_utils.attention:143 >> "
        "FlashAttention-2 is not "
        "installed: No module named 'flash_attn'\n"
        "RuntimeError: boom\n"
    )
    assert explain_failure(log, 1).kind == "error"


def test_tail_is_bounded():
    log = "".join(f"[INFO|2026-11-28 03:09:00] step {i}\n" for i in range(500)) + "RuntimeError: boom\n"
    failure = explain_failure(log, 1, max_lines=5)
    assert len(failure.tail.splitlines()) == 5 and failure.tail.endswith("RuntimeError: boom")
    long_line = explain_failure("x" * 5000 + "\n", 1).tail
    assert len(long_line) <= 300


def test_never_raises_on_odd_input():
    for text in [
        "\r\r\r",
        "\x00\x01",
        "Traceback (most recent call last):\n",
        "[rank0]: \n[rank1]:",
        "ValueError:",
    ]:
        failure = explain_failure(text, 1)
        assert isinstance(failure.reason, str) and failure.reason


def test_unknown_child_exception_beats_torchruns_childfailederror():
    log = TORCHRUN_CHILD_OOM.replace(
        "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)",
        "mat1 and mat2 shapes cannot be multiplied",
    )
    failure = explain_failure(log, 1)
    assert (failure.kind, failure.reason) == ("error", "mat1 and mat2 shapes cannot be multiplied.")


def test_fixtures_keep_their_carriage_returns():
    # The tqdm redraws are what the cleaning has to cope with; make sure they are really there.
    assert "\r" in NO_VALID_SAMPLES and "\r" in BAD_JSON_DATASET


def test_carriage_return_redraws_keep_only_what_a_terminal_shows():
    failure = explain_failure("Saving model 1/3\rSaving model 2/3\rRuntimeError: boom\n", 1)
    assert (failure.reason, failure.tail) == ("boom.", "RuntimeError: boom")


# What `llamafactory-cli train` prints before training (SupervisedDatasetProcessor.print_data_example's
# format), here for a dataset that talks about GPU errors.
PRINTED_EXAMPLE = """\
[INFO|2026-11-28 03:17:08] llamafactory.data.loader:144 >> Loading dataset support.jsonl...
training example:
input_ids:
[501, 507, 262, 331, 508, 198, 198, 49, 68, 79, 68, 258, 342, 220, 86, 78, 81, 67, 220, 451, 510]
inputs:
<|begin_of_text|><|start_header_id|>user<|end_header_id|>

My job says "torch.OutOfMemoryError: CUDA out of memory" and "No space left on device". Help?<|eot_id|>\
<|start_header_id|>assistant<|end_header_id|>

Lower the batch size.<|eot_id|>
label_ids:
[-100, -100, -100, -100, -100, -100, -100, -100, -100, -100, -100, 451, 510]
labels:
Lower the batch size.
ValueError: Address already in use
Lower the batch size.<|eot_id|>
[INFO|configuration_utils.py:769] 2026-11-28 03:17:10,976 >> loading configuration file /models/m/config.json
Traceback (most recent call last):
  File "/opt/venv/lib/python3.12/site-packages/llamafactory/model/loader.py", line 180, in load_model
RuntimeError: Error(s) in loading state_dict for LlamaForCausalLM
"""


def test_the_printed_training_example_is_not_read_as_the_cause():
    failure = explain_failure(PRINTED_EXAMPLE, 1)
    assert (failure.kind, failure.reason) == ("error", "Error(s) in loading state_dict for LlamaForCausalLM.")
    assert "Help?" not in failure.tail and "Lower the batch size" not in failure.tail
    assert "Loading dataset support.jsonl" in failure.tail
