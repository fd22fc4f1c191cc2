"""The run machinery around a search or training loop, the same files in both folders of the repository.

`engine.Run` (run folder, checkpoints, resume, preemption, metrics, history), the flags every
script shares (`run_flags`), the data plumbing (`data_common`, `image_files`, `streams`,
`device_data`), torchrun (`distributed`), the GPU options (`accel`), progressive learning's
stage schedule and net2wider (`stages`, `net2wider`) and the report tables. Nothing here
imports a module of the method: the space and each folder's own flags are passed in.
"""
