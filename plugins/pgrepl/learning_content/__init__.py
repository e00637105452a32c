"""Learning content: the LCMS API's payload into eight typed warehouse tables, swapped in atomically.

- :mod:`~pgrepl.learning_content.mapping` - the tables as data and the pure record -> row function;
- :mod:`~pgrepl.hooks.lcms` - ``LcmsHook``, an ``HttpHook`` that fetches the payload;
- :mod:`~pgrepl.learning_content.loader` - staging tables, COPY, indexes, one-transaction swap;
- :mod:`~pgrepl.learning_content.sync` - the three together (what the operator runs).
"""
