"""All checkpoint I/O: the directory layout and ``latest`` (layout), the crash-safe save and resume of a run
(engine_io), the fp32 master weights and client state without an engine (zero), universal checkpoints for
another world size (universal), weights from any source into a model (weights), and Hugging Face VideoMAE
directories (hf: encoders and classifiers; hf_pretraining: the whole pretraining model). Tools call this
package; it never imports them.
A training run's side of it (when to save, what to keep, whether a checkpoint may resume here) is the manager.

    from motionmae_ds import checkpoint as ckpt
    ckpt.save(engine, ckpt_dir, ckpt.tag_for(step), client_state)
    report = ckpt.load_into(classifier, "runs/pretrain/checkpoints", "finetune")
"""
from motionmae_ds.checkpoint import hf, hf_pretraining
from motionmae_ds.checkpoint.engine_io import gathered_module, load_latest, rng_state, save, set_rng_state
from motionmae_ds.checkpoint.layout import (
    CLASSIFIER_ONLY_PREFIXES,
    DECODER_PREFIXES,
    HEAD_PREFIXES,
    LATEST,
    LATEST_UNIVERSAL,
    MODEL_STATES,
    OLD_PREFIX,
    RUN_CHECKPOINTS,
    RUN_CONFIG,
    TAG_RE,
    TMP_PREFIX,
    UNIVERSAL_SUFFIX,
    CheckpointError,
    IncompleteCheckpointError,
    WeightsDoNotFitError,
    find_run_dir,
    is_complete,
    is_universal,
    list_tags,
    prune,
    read_latest,
    read_pointer,
    remove_stale,
    resolve,
    saved_world_size,
    tag_for,
    write_latest,
)
from motionmae_ds.checkpoint.manager import CheckpointManager
from motionmae_ds.checkpoint.run_record import (
    RUN_HISTORY,
    RUN_INFO,
    RunRecord,
    WrongKindError,
    kind_of_config,
    require_kind,
    source_kind,
)
from motionmae_ds.checkpoint.universal import prepare_resume, rescale_micro_in_epoch, to_universal
from motionmae_ds.checkpoint.weights import (
    PURPOSES,
    LoadReport,
    encoder_weights,
    load_into,
    normalise_names,
    read_weights,
)
from motionmae_ds.checkpoint.zero import fp32_state_dict, load_model_states, module_weights, read_client_state

__all__ = [
    "CLASSIFIER_ONLY_PREFIXES", "DECODER_PREFIXES", "HEAD_PREFIXES", "LATEST", "LATEST_UNIVERSAL", "MODEL_STATES",
    "OLD_PREFIX", "PURPOSES", "RUN_CHECKPOINTS", "RUN_CONFIG", "TAG_RE", "TMP_PREFIX", "UNIVERSAL_SUFFIX",
    "RUN_HISTORY", "RUN_INFO", "RunRecord", "WrongKindError", "kind_of_config", "require_kind", "source_kind",
    "CheckpointError", "CheckpointManager", "IncompleteCheckpointError", "LoadReport", "WeightsDoNotFitError",
    "encoder_weights", "find_run_dir", "fp32_state_dict", "gathered_module", "hf", "hf_pretraining", "is_complete",
    "is_universal", "list_tags", "load_into", "load_latest", "load_model_states", "module_weights", "normalise_names",
    "prepare_resume", "prune", "read_client_state", "read_latest", "read_pointer", "read_weights", "remove_stale",
    "rescale_micro_in_epoch", "resolve", "rng_state", "save", "saved_world_size", "set_rng_state", "tag_for",
    "to_universal", "write_latest",
]
