"""Semantic segmentation with the official UperNet: the heads (:mod:`.upernet`), the recipe's configuration and
presets (:mod:`.config`), the data pipeline (:mod:`.data`), losses and metrics, the trainer on
:mod:`overlock.engine` (:mod:`.training`) and inference (:mod:`.inference`: whole, sliding-window, flip and
multi-scale). Import the modules themselves; the package loads none of them.
"""
