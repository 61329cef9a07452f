pub mod redis_group;
