"""The quote PDF (reportlab)."""

from __future__ import annotations

import io
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle


def quote_pdf(data: dict[str, Any]) -> bytes:
    """data: quote_number, customer_name, valid_until, version, specification, pricing, message."""
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        title=f"Quote {data['quote_number']}",
        author="celery-bundle",
        invariant=1,  # same input, same bytes: a resent quote is the identical document
    )
    styles = getSampleStyleSheet()
    spec = data["specification"]
    dims = spec.get("dimensions", {})
    pricing = data["pricing"]
    rows = [
        ["Material", str(spec.get("material"))],
        ["Quantity", str(spec.get("quantity"))],
        [
            "Dimensions (mm)",
            f"{dims.get('length_mm')} x {dims.get('width_mm')} x {dims.get('height_mm')}",
        ],
        ["Finish", str(spec.get("finish", "none"))],
        ["Tolerance", str(spec.get("tolerance", "standard"))],
        ["Unit price", str(pricing["unit_price"])],
        ["Total price", str(pricing["total_price"])],
    ]
    table = Table(rows, colWidths=[150, 300])
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                ("BACKGROUND", (0, 0), (0, -1), colors.whitesmoke),
            ]
        )
    )
    story = [
        Paragraph(f"Quote {data['quote_number']} (version {data['version']})", styles["Title"]),
        Paragraph(f"Customer: {data['customer_name']}", styles["Normal"]),
        Paragraph(f"Valid until: {data['valid_until']}", styles["Normal"]),
        Spacer(1, 12),
        table,
    ]
    if data.get("message"):
        story += [Spacer(1, 12), Paragraph(str(data["message"]), styles["Normal"])]
    doc.build(story)
    return buffer.getvalue()
