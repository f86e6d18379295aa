"""The persistence sweep, pure parts: the sweep file and its cells (``grid``), what each cell
measures (``results``), the summary table (``table``) and the report (``report``).

May import: every other subpackage of ``rlhf``; nothing imports it but ``jobs/`` and ``actors/``.
"""
