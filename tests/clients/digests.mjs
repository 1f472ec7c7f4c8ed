// digests.py through the DuckDB npm package (@duckdb/node-api): node digests.mjs LAKE_HOME
import { DuckDBInstance } from "@duckdb/node-api";

const home = process.argv[2];
const quote = (text) => text.replaceAll("'", "''");
const ident = (name) => '"' + name.replaceAll('"', '""') + '"';
const rows = async (con, sql) => (await con.runAndReadAll(sql)).getRows();

const instance = await DuckDBInstance.create(`${home}/catalog.duckdb`, { access_mode: "READ_ONLY" });
const con = await instance.connect();
await con.run(`SET file_search_path = '${quote(home)}'`);
await con.run("SET TimeZone = 'UTC'");
const views = {};
for (const [view] of await rows(con, "select view_name from duckdb_views() where not internal order by 1")) {
  const [[count, md5]] = await rows(
    con,
    "select count(*), md5(coalesce(string_agg(t::varchar, chr(10) order by t::varchar), '')) " +
      `from ${ident(view)} as t`,
  );
  views[view] = [Number(count), md5];
}
const [[version]] = await rows(con, "select version()");
console.log(JSON.stringify({ duckdb: version, views }));
