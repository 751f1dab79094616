-- The app database's state in one row (tasks/database_check.yml); run while connected to it.
-- Rights are read from the ACLs themselves (aclexplode), NULL meaning the built-in default.
SELECT
  (SELECT json_object_agg(a.rolname, json_build_object(
            'login', a.rolcanlogin, 'inherit', a.rolinherit, 'superuser', a.rolsuper,
            'createdb', a.rolcreatedb, 'createrole', a.rolcreaterole,
            'replication', a.rolreplication, 'bypassrls', a.rolbypassrls,
            'password', a.rolpassword,
            'config', (SELECT s.setconfig FROM pg_db_role_setting s
                       WHERE s.setrole = a.oid AND s.setdatabase = 0)))
     FROM pg_authid a WHERE a.rolname = ANY(string_to_array(%(roles)s, ','))) AS roles,
  (SELECT json_agg(json_build_array(g.rolname, u.rolname))
     FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
    WHERE u.rolname = ANY(string_to_array(%(roles)s, ','))) AS members,
  (SELECT json_build_object(
            'owner', pg_get_userbyid(d.datdba), 'encoding', pg_encoding_to_char(d.encoding),
            'collate', d.datcollate, 'ctype', d.datctype,
            'connect', (SELECT array_agg(DISTINCT pg_get_userbyid(x.grantee))
                          FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) x
                         WHERE x.privilege_type = 'CONNECT' AND x.grantee <> 0))
     FROM pg_database d WHERE d.datname = current_database()) AS database,
  (SELECT string_agg(x.privilege_type, ',' ORDER BY x.privilege_type)
     FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) x
    WHERE d.datname = current_database() AND x.grantee = 0) AS database_public,
  (SELECT array_agg(x.privilege_type)
     FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) x
    WHERE n.nspname = 'public' AND x.grantee = 0) AS schema_public,
  (SELECT count(*) FROM pg_class WHERE pg_get_userbyid(relowner) = %(app)s)
    + (SELECT count(*) FROM pg_proc WHERE pg_get_userbyid(proowner) = %(app)s) AS app_owns,
  -- ALL TABLES IN SCHEMA covers tables, views, materialized views, foreign and partitioned tables.
  (SELECT count(*) FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
      AND (SELECT count(DISTINCT x.privilege_type)
             FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) x
            WHERE pg_get_userbyid(x.grantee) = %(app)s
              AND x.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')) < 4) AS tables_short,
  (SELECT count(*) FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
      AND (SELECT count(DISTINCT x.privilege_type)
             FROM aclexplode(coalesce(c.relacl, acldefault('s', c.relowner))) x
            WHERE pg_get_userbyid(x.grantee) = %(app)s
              AND x.privilege_type IN ('USAGE', 'SELECT')) < 2) AS sequences_short,
  (SELECT json_object_agg(CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences'
                          ELSE d.defaclobjtype::text END,
                          (SELECT array_agg(x.privilege_type) FROM aclexplode(d.defaclacl) x
                            WHERE pg_get_userbyid(x.grantee) = %(app)s))
     FROM pg_default_acl d
    WHERE d.defaclnamespace = 'public'::regnamespace
      AND pg_get_userbyid(d.defaclrole) = %(owner)s) AS default_privs
