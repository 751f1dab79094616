"""Task modules, one per queue prefix: pricing, notifications, data, maintenance, ops."""
