-- Azure import (issue #4). An endpoint imported from Azure remembers the ARM resource id of
-- its deployment, so importing it again updates it instead of creating a duplicate, and the
-- SKU and capacity ARM reported, which gateway proposals use for priorities and weights.
-- All NULL for endpoints created by hand. SQLite cannot add a UNIQUE column, hence the index
-- (NULLs never collide in a unique index, on either backend).
ALTER TABLE inference_endpoints ADD COLUMN arm_resource_id TEXT;
ALTER TABLE inference_endpoints ADD COLUMN sku_name TEXT;
ALTER TABLE inference_endpoints ADD COLUMN sku_capacity INTEGER CHECK (sku_capacity >= 0);
CREATE UNIQUE INDEX inference_endpoints_arm_resource_id ON inference_endpoints (arm_resource_id);
