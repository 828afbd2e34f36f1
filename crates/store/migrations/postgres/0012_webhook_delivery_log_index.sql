-- An endpoint's delivery log is paged by id (ListWebhookDeliveries: endpoint_id = ? AND id > ?
-- ORDER BY id): without this index each page read and sorted the endpoint's whole log.
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id);
