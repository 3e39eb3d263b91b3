-- Task mapping (docs/mapping.md): a mapped task's instances are rows `task[N]` of
-- task_instances, each holding the item it was made for (JSON), written when the task is
-- expanded, so a try reads its own item without the whole list.
ALTER TABLE task_instances ADD COLUMN map_item TEXT;
