"""The training recipe of `dasd train` (torch code that needs the model lives here).

- ``forward``: the loss of one packed sequence (isolation lives in ``dasd_cli.model``).
- ``recipe``: setup / train loop / save_checkpoint / resume, one readable file.
- ``checkpoint``: what a checkpoint folder holds and how it is read back.
- ``distributed``: torchrun / deepspeed launch, ZeRO-3 engine, stdout discipline.
- ``run``: one `dasd train` run (data opened and checked, the loop, metrics per step).
"""
