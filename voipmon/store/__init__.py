"""The central's CDR store (design section 1, store/).

``interfaces`` (IStore, errors, the dict shapes), ``sqlstore`` (SqlStore over an adbapi pool),
``pool`` (the transaction loop: reconnect, retry, outage log), ``dialect`` (all that differs
between MySQL/MariaDB and SQLite), ``schema`` and ``migrate`` (tables and their versions),
``rows`` and ``fields`` (Cdr to rows and back), ``query`` (the CDR list filters),
``sensors`` (the sensors table's rules), ``testing`` (helpers for tests and benchmarks).
"""
