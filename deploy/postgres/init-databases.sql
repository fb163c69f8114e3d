-- One database per Fugou service (a service never reads another's tables).
-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d/),
-- as the superuser from POSTGRES_USER, which then owns the databases.
-- Keep in step with services/registry.py: tests/unit/test_deploy_files.py checks it.
-- For an external PostgreSQL (Kubernetes), run the same statements, ideally with one
-- login role per service owning its database (see deploy/k8s/README.md).
CREATE DATABASE fugou_gateway;
CREATE DATABASE fugou_segmentation;
CREATE DATABASE fugou_coupons;
CREATE DATABASE fugou_loyalty;
CREATE DATABASE fugou_notifications;
