"""Governance: the pure decision core of failure classification, the Doctor and model routing.

Plain functions on plain data; the engine (``autopack/engine/doctor.py``, ``autopack/engine/routing.py``,
called from ``autopack/engine/steps.py``) loads rows, calls these and records the outcome on the
attempt. Modules:

- ``classify``: ``AttemptFacts`` → ``FailureClass``; ``burns_attempt``.
- ``doctor``: ``DoctorAction``, ``DoctorDecision``, ``deterministic_decision``, ``needs_escalation``,
  ``DoctorBudget``/``can_call``; ``doctor_prompt``: ``render_doctor_prompt``, ``parse_doctor_verdict``.
- ``quotas``: ``QuotaWindow``, ``UsageTotals``, ``quota_pressure``.
- ``routing``: ``route``, ``backoff_seconds``.

The other governance decisions live beside the engine as pure modules of their own: ``autopack.decide``
(complete/retry/fail and the health budget), ``autopack.escalation``, ``autopack.replan``,
``autopack.auditor`` (dual audit and the judge) and ``autopack.engine.ledger`` (reservations).
Configuration: ``config/strategy.yaml`` ``run.doctor`` and ``run.routing``; ``config/models.yaml``
``providers.<name>.quotas``.
"""
