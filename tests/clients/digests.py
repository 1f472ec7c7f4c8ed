"""Every catalog view's row count and an md5 of its rows, from whichever DuckDB runs this file.

    python digests.py LAKE_HOME           open LAKE_HOME/catalog.duckdb read-only, then the one
                                          documented step: SET file_search_path = 'LAKE_HOME'
    python digests.py LAKE_HOME --cwd     no step: rely on the working directory being LAKE_HOME

Prints JSON {"duckdb": version, "views": {view: [rows, md5]}}. Needs only the duckdb package, so it
runs under an older DuckDB in a separate virtualenv (tests/clients/__init__.py); digests.mjs does the
same through the npm package.
"""

import json
import sys

import duckdb

VIEWS = "select view_name from duckdb_views() where not internal order by 1"
# rows rendered by DuckDB itself (no client-side type conversion), sorted: order-free and exact
DIGEST = (
    "select count(*), md5(coalesce(string_agg(t::varchar, chr(10) order by t::varchar), '')) "
    "from {view} as t"
)


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def digests(con):
    con.execute("set TimeZone = 'UTC'")
    views = [row[0] for row in con.execute(VIEWS).fetchall()]
    return {v: list(con.execute(DIGEST.format(view=quote_ident(v))).fetchone()) for v in views}


def main(argv):
    home = argv[1]
    con = duckdb.connect(home + "/catalog.duckdb", read_only=True)
    if "--cwd" not in argv:
        con.execute("set file_search_path = '" + home.replace("'", "''") + "'")
    print(json.dumps({"duckdb": duckdb.__version__, "views": digests(con)}))


if __name__ == "__main__":
    main(sys.argv)
