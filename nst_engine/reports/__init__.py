"""Reports over result tables, after the fact and on any machine: ``selection`` reads the
rows a report shows, ``scaling`` fits time and memory against pixels, ``plots`` draws the
figures, ``html`` writes the pages and ``build`` puts them together. Knows the result
schema, never Ray."""
