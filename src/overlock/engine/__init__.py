"""The training engine every task's trainer runs on: one training loop (:mod:`.loop`) and its parts, checkpoints
written atomically and read back weights-only, process groups, the resumable sampler, seeding and RNG states, the
optimizer step, progress and run logs.

Light on purpose: importing the package loads none of its modules, so inference can use the checkpoint reader
without the loop; import the modules themselves (``from overlock.engine.loop import TrainingLoop``).
"""
